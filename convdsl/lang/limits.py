"""Resource limits of the front end: what a program may ask for before it is refused."""

DEFAULT_MAX_BYTES = 16 * 1024**3  # one tensor, or all parameters together
MAX_BLOCK_DEPTH = 64
MAX_IMPORT_DEPTH = 64  # files importing files importing files...
MAX_LOOP_ITERATIONS = 1_000_000
MAX_NODES = 1_000_000
MAX_STEPS = 100_000  # loop iterations plus block/def calls over the whole elaboration (bounds time)
MAX_INT_BITS = 4096  # hyper-parameter integers beyond 2**4096 are refused
MAX_SEQ_LEN = MAX_LOOP_ITERATIONS  # longest list or string built at elaboration time
MAX_SOURCE = 4 * 1024 * 1024  # bytes of one .cdl file (the main file and every import)
