"""Fakes and harnesses for raftvip's tests, benchmarks, chaos suite and lab (like kazoo.testing).

- `clock`: `FakeClock`, a monotonic + wall clock that only moves when told to.
- `exabgp`: `FakeExabgp`, an in-process ExaBGP pipe (RIB, acks on demand).
- `driver`: `LoopDriver`, the pure member loop (`raftvip.core.loop`) run in-process against a
  fake clock, a scripted group and a fake pipe.
- `wait`: `free_port`, `wait_until`: the one copy of each.
- `group`: members as real OS processes (`Group`), their stdout read and acked as ExaBGP would.
- `bgplab`: real BIRD 2 routers and ExaBGP speakers on loopback.
- `zk`: a real ZooKeeper 3.8 on 127.0.0.1.

Nothing here is used by `raftvip run`.
"""
