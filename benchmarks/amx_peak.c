/* AMX int8 check and roof: one 16x64 u8 x 64x16 s8 tdpbusd against a plain loop, then the peak of
 * tdpbusd alone (4 independent accumulator tiles, operands in tile registers: no loads).
 *
 *     gcc -O2 -mamx-tile -mamx-int8 benchmarks/amx_peak.c -o /tmp/amx_peak && /tmp/amx_peak
 *
 * Linux gives a process the AMX tile state only after arch_prctl(ARCH_REQ_XCOMP_PERM,
 * XFEATURE_XTILEDATA); without it the first tile instruction is SIGILL (convdsl:
 * backends/tvm/targets.py request_amx). */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
typedef struct { uint8_t palette, start; uint8_t r[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) cfg_t;
int main(){
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) { perror("prctl"); return 1; }
  static uint8_t A[16*64]; static int8_t B[16*64]; /* B: 16 rows(K/4) x 64 bytes (16 cols x 4) */
  static int32_t C[16*16], R[16*16];
  for (int i=0;i<16*64;i++){A[i]=(i*37+11)&255; B[i]=(int8_t)((i*53+7)&255);}
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for(int t=0;t<8;t++){c.rows[t]=16;c.colsb[t]=64;}
  _tile_loadconfig(&c);
  _tile_zero(0); _tile_loadd(1,A,64); _tile_loadd(2,B,64); _tile_dpbusd(0,1,2); _tile_stored(0,C,64);
  for(int m=0;m<16;m++)for(int n=0;n<16;n++){int s=0;for(int k=0;k<64;k++) s+=A[m*64+k]*B[(k/4)*64+n*4+k%4]; R[m*16+n]=s;}
  printf("match=%d\n", memcmp(C,R,sizeof C)==0);
  /* peak: 4 accumulators, 2 A, 2 B tiles, loop */
  long N=20000000; struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  _tile_zero(4);_tile_zero(5);_tile_zero(6);_tile_zero(7); _tile_loadd(0,A,64);_tile_loadd(1,A,64);_tile_loadd(2,B,64);_tile_loadd(3,B,64);
  for(long i=0;i<N;i++){ _tile_dpbusd(4,0,2); _tile_dpbusd(5,0,3); _tile_dpbusd(6,1,2); _tile_dpbusd(7,1,3);}
  clock_gettime(CLOCK_MONOTONIC,&t1); _tile_stored(4,C,64);
  double s=(t1.tv_sec-t0.tv_sec)+1e-9*(t1.tv_nsec-t0.tv_nsec);
  printf("tdpbusd: %.1f GOP/s per core (%.2f ns per instr) c=%d\n", N*4*16*16*64*2/s/1e9, s/(N*4)*1e9, C[0]);
  _tile_release(); return 0;}
