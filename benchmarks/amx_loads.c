/* AMX bf16 tile products with their operands loaded, by where the operands live: the 2 x 2 block's
 * reduction step of convdsl's micro-kernel (schedules/amx.py tile_step: 2 A and 2 B tiles of 1 KiB, 4
 * tdpbf16ps into 4 accumulator tiles), over A and B buffers of 4 KB to 8 MB (L1 to beyond L2), loading both,
 * only A or only B.  What a bf16 AMX kernel's step costs when its weights (B) stream from beyond L2, as a
 * transformer's MLP weights do at batch 1 (docs/benchmarks.md, "Roofline").  One thread.
 *
 *     gcc -O2 -mamx-tile -mamx-bf16 benchmarks/amx_loads.c -o /tmp/amx_loads && /tmp/amx_loads
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
typedef struct { uint8_t palette, start; uint8_t r[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) cfg_t;
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec;}
int main(int argc, char**argv){
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) { perror("prctl"); return 1; }
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for(int t=0;t<8;t++){c.rows[t]=16;c.colsb[t]=64;}
  _tile_loadconfig(&c);
  size_t sizes[] = {4096, 32768, 256*1024, 1024*1024, 8*1024*1024};
  for (int si=0; si<5; si++){
    size_t S = sizes[si]; char *A = aligned_alloc(64, S), *B = aligned_alloc(64, S);
    memset(A, 1, S); memset(B, 1, S);
    long steps = S/2048; long N = 200000000/steps/4096*4096/ (S>65536?8:1); if (N<16) N=16;
    for (int mode=0; mode<3; mode++){
      _tile_zero(4);_tile_zero(5);_tile_zero(6);_tile_zero(7);
      double t0=now();
      for(long it=0; it<N; it++) for(long s=0; s<steps; s++){
        char*a=A+s*2048, *b=B+s*2048;
        if (mode!=1){ _tile_loadd(0,a,64); _tile_loadd(1,a+1024,64);}
        if (mode!=2){ _tile_loadd(2,b,64); _tile_loadd(3,b+1024,64);}
        _tile_dpbf16ps(4,0,2); _tile_dpbf16ps(5,0,3); _tile_dpbf16ps(6,1,2); _tile_dpbf16ps(7,1,3);}
      double s=now()-t0;
      printf("buf %7zu KB  loads %s: %.2f ns/step  %.0f GFLOP/s\n", S/1024, mode==0?"A+B":mode==1?"B  ":"A  ",
             s/(N*steps)*1e9, N*steps*4*16*16*32*2/s/1e9);
    }
    free(A); free(B);
  }
  _tile_release(); return 0;}
