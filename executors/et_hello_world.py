"""The seed's HelloWorld executor (seed/complex_tasks.md), on the executor toolkit.

    python executors/et_hello_world.py --service-host http://127.0.0.1:8083/ --id 0
    pyinstaller -F executors/et_hello_world.py -n et_hello_world

Same command line and output as the seed: `[debug] ET-HelloWorld-0: 已启动 <ip>`,
then `Hello World` every few minutes. Unlike the seed it never blocks or
crashes while the service is unreachable, and exits 0 at once on SIGTERM.
"""

import os
import random
import sys

try:
    from exec_supervisor.executor import Executor, public_ip, local_address
except ImportError:  # run from a checkout without `pip install -e .`: use the repo next door
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from exec_supervisor.executor import Executor, public_ip, local_address

et = Executor("HelloWorld")
# The seed looks up its public IP (1 s timeout); offline, show the local address
# used to reach the service instead: that is the one the exemption list needs.
et.log("debug", f"已启动 {public_ip(timeout=1, fallback=local_address(et.service_host))}")


@et.run
def work() -> None:
    # The seed busy-waits 13-23 s, prints, then sleeps 6 minutes.
    if et.wait(random.randint(13, 23)):
        return
    print("Hello World", flush=True)
    et.wait(360)
