"""Supervision trees: OTP strategies, restart intensity, restart backoff, stable refs.

```python
from garrison.supervision import Supervisor, ChildSpec, Strategy, Restart

sup = Supervisor.start("root", strategy=Strategy.ONE_FOR_ONE, max_restarts=3,
                       within_seconds=5.0, children=[ChildSpec("worker", MyActor)])
ref = sup.child("worker")      # a garrison.Ref that survives restarts
sup.tree()                     # {"name": "root", "state": "running", "restarts": 0, ...}
sup.stop()                     # children stop in reverse start order
```
"""

from garrison.errors import SupervisorGaveUp
from garrison.supervision._spec import ChildSpec, Restart, Strategy
from garrison.supervision._supervisor import Supervisor, SupervisorRef

__all__ = ["ChildSpec", "Restart", "Strategy", "Supervisor", "SupervisorGaveUp", "SupervisorRef"]
