"""Architecture search by mutating CDL programs (design section 8).

A CDL program with ``choice(...)`` is a search space (``space``).  Candidates are programs:
mutation operators edit the program text (``mutate``) and every mutant passes the same front end
as user code.  ``evolution`` holds regularized evolution with a Pareto front and the random-search
baseline; ``runner`` the loop that stores every candidate in a SQLite history (``store``, which
``history`` checks as it reads it back, and ``files`` writes beside it) and resumes after a crash
or a kill; ``executors`` a local process pool (workers bound to the search by ``lifeline``) or
Ray; ``report`` the Pareto programs, summary and plot; ``faults`` the named points where tests
hold a search to kill it.  Data flows: space -> mutate -> evolution -> runner (executors, store)
-> report.
"""
from convdsl.search.evolution import RandomSearch, RegularizedEvolution, dominates, nondominated_ranks, pareto_front
from convdsl.search.executors import LocalExecutor, RayExecutor, make_executor
from convdsl.search.mutate import OPERATORS, mutate
from convdsl.search.report import write_report
from convdsl.search.runner import Search, SearchConfig
from convdsl.search.space import Genotype, Rejected, SearchSpace
from convdsl.search.store import Store

__all__ = ["OPERATORS", "Genotype", "LocalExecutor", "RandomSearch", "RayExecutor", "RegularizedEvolution",
           "Rejected", "Search", "SearchConfig", "SearchSpace", "Store", "dominates", "make_executor", "mutate",
           "nondominated_ranks", "pareto_front", "write_report"]
