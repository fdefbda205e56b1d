"""Placeholder HelloWorld executor (rewritten on the toolkit by issue 5)."""
import argparse
import signal
import sys
import time

parser = argparse.ArgumentParser(description="ExecTasks HelloWorld")
parser.add_argument("--service-host", dest="service_host", default="http://127.0.0.1:8083/")
parser.add_argument("--id", dest="id", type=int, default=0)
args = parser.parse_args()
exec_id = f"ET-HelloWorld-{args.id}"
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"[debug] {exec_id}: started", flush=True)
while True:
    print("Hello World", flush=True)
    time.sleep(360)
