"""Architecture search by mutating CDL programs (design section 8).

A CDL program with ``choice(...)`` is a search space (``space``).  Candidates are programs:
mutation operators edit the program text (``mutate``) and every mutant passes the same front end
as user code.  ``evolution`` holds regularized evolution with a Pareto front and the random-search
baseline; ``runner`` the loop that stores every candidate in a SQLite history (``store``) and
resumes after a crash; ``executors`` a local process pool or Ray; ``report`` the Pareto programs,
summary and plot.  Data flows: space -> mutate -> evolution -> runner (executors, store) -> report.
"""
from .evolution import RandomSearch, RegularizedEvolution, dominates, nondominated_ranks, pareto_front
from .executors import LocalExecutor, RayExecutor, make_executor
from .mutate import OPERATORS, mutate
from .report import write_report
from .runner import Search, SearchConfig
from .space import Genotype, Rejected, SearchSpace
from .store import Store

__all__ = ["OPERATORS", "Genotype", "LocalExecutor", "RandomSearch", "RayExecutor", "RegularizedEvolution",
           "Rejected", "Search", "SearchConfig", "SearchSpace", "Store", "dominates", "make_executor", "mutate",
           "nondominated_ranks", "pareto_front", "write_report"]
