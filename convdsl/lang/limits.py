"""Resource limits of the front end: what a program may ask for before it is refused.

Together they bound the time and memory of elaborating any program to a few seconds and a few
hundred MB: ``MAX_WORK`` counts what the elaborator does (expressions evaluated, items and
characters built, graph nodes made) whatever loops, recursion or aliasing produced it.
"""

import contextlib
import sys
from typing import Iterator

DEFAULT_MAX_BYTES = 16 * 1024**3  # --max-memory: parameters + every tensor + the largest op workspace
MAX_BLOCK_DEPTH = 64
MAX_IMPORT_DEPTH = 64  # files importing files importing files...
MAX_LOOP_ITERATIONS = 1_000_000
MAX_NODES = 50_000  # graph nodes: ~0.4 ms each through check (elaborate, verify, stats), 20 s at the limit
MAX_STEPS = 100_000  # loop iterations plus block/def calls over the whole elaboration
MAX_EVAL_DEPTH = 1_000  # expressions and calls nested at elaboration time (recursion through defs, blocks)
# Elaboration work, in units of about 0.1-0.2 us (measured on a 2-core EPYC, see
# tests/adversarial/test_bombs.py): an item of a list built costs 1, 64 characters of a string 1,
# an expression evaluated 10, a loop iteration or call 10 more, a graph node 300.
MAX_WORK = 30_000_000  # a few seconds in all
WORK_PER_EVAL = 10
WORK_PER_STEP = 10
WORK_PER_NODE = 300
CHARS_PER_WORK = 64
MAX_INT_BITS = 4096  # hyper-parameter integers beyond 2**4096 are refused
MAX_SEQ_LEN = MAX_LOOP_ITERATIONS  # longest list or string built at elaboration time
MAX_VALUE_SIZE = 4 * MAX_SEQ_LEN  # items of a list counted through nesting and aliasing (values.measure)
MAX_VALUE_DEPTH = 32  # lists nested in lists
MAX_RANK = 64  # tensor rank, as numpy and torch
MAX_DIM = 2**62  # one dimension (torch sizes are int64)
MAX_DIM_TEXT = 256  # characters of a symbolic dimension ("(H-1)//2+1")
MAX_ATTR_ITEMS = 65_536  # items of a list given to an op (kernel sizes, shapes, split sizes, gather indices: a 12x12
#                         window's relative-position index is 20,736 positions, measured as two items each)
MAX_NAME = 512  # characters of an instance name
MAX_SOURCE = 4 * 1024 * 1024  # bytes of one .cdl file (the main file and every import)


@contextlib.contextmanager
def stack_room(frames: int) -> Iterator[None]:
    """Python's recursion limit raised (for the ``with`` body) to the current depth plus ``frames``
    plus a margin.  Python-to-Python calls use no C stack since 3.11, so a higher limit costs heap
    only."""
    old = sys.getrecursionlimit()
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    need = depth + 100 + frames
    if need > old:
        sys.setrecursionlimit(need)
    try:
        yield
    finally:
        if need > old:
            sys.setrecursionlimit(old)
