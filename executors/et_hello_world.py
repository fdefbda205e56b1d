"""The seed's HelloWorld executor (seed/complex_tasks.md), on the executor toolkit.

    python executors/et_hello_world.py --service-host http://127.0.0.1:8083/ --id 0
    pyinstaller -F executors/et_hello_world.py -n et_hello_world

Same command line and output as the seed: `[debug] ET-HelloWorld-0: 已启动 <ip>`,
then `Hello World` every few minutes. Unlike the seed it never blocks or
crashes while the service is unreachable, and exits 0 at once on SIGTERM.

<ip> is the local address this host uses to reach the service (what the service's
token-exempt list needs); nothing leaves the machine but requests to the service.
The seed's public-IP lookup runs only when asked, with the URL of a service that
answers with the caller's address:

    python executors/et_hello_world.py --id 0 --public-ip-url http://ifconfig.me/ip
    ET_PUBLIC_IP_URL=http://ifconfig.me/ip python executors/et_hello_world.py --id 0
"""

import argparse
import os
import random
import sys

try:
    from exec_supervisor.executor import Executor, public_ip, local_address
except ImportError:  # run from a checkout without `pip install -e .`: use the repo next door
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from exec_supervisor.executor import Executor, public_ip, local_address

parser = argparse.ArgumentParser(description="ExecTasks HelloWorld")
parser.add_argument(
    "--public-ip-url", default=os.environ.get("ET_PUBLIC_IP_URL") or None, metavar="URL",
    help="look up this host's public IP there at start (default: $ET_PUBLIC_IP_URL; unset: show "
         "the local address used to reach the service, with no outside request)",
)
et = Executor("HelloWorld", parser=parser)
address = local_address(et.service_host)
if et.args.public_ip_url:  # the seed's lookup, only when asked; offline, the local address
    address = public_ip(et.args.public_ip_url, timeout=1, fallback=address)
et.log("debug", f"已启动 {address}")


@et.run
def work() -> None:
    # The seed busy-waits 13-23 s, prints, then sleeps 6 minutes.
    if et.wait(random.randint(13, 23)):
        return
    print("Hello World", flush=True)
    et.wait(360)
