"""raftvip: a Raft group of load balancers that decides which one announces each VIP."""

__version__ = "0.1.0"
