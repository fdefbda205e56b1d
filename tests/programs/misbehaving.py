"""A misbehaving executor for the tests. Behaviour comes from --mode (extra argv) or ET_TEST_MODE.

Modes:
  sleep            print a start line, sleep until SIGTERM, exit 0
  exit:N           print a line and exit with code N at once
  exit-after:S:N   run S seconds, then exit with code N
  ignore-term      ignore SIGTERM and sleep forever (needs SIGKILL)
  grandchildren    start a child in our group, and a double-forked grandchild that calls setsid,
                   both ignoring SIGTERM and carrying our environment; then sleep
  crash-leaving    like grandchildren, but the main process exits 1 after 0.3 s, leaving them behind
  chatty:N         write N-byte numbered lines as fast as possible, forever
  file:PATH        read PATH each start: 'crash' -> exit 1 at once, anything else -> like sleep
  escapes          leave descendants every way a process can: a setsid child, a double-forked
                   daemon, a setsid child that closes every fd, a setsid child that re-execs
                   `sleep` with an empty environment; all ignore SIGTERM; prints 'escapee KIND pid=N'
  crash-clean-env  a setsid grandchild re-execs `sleep` with an empty environment (no ET_EXEC_ID,
                   no mark), then the main process exits 1 after 0.2 s
"""
import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--service-host", default="http://127.0.0.1:8083/")
parser.add_argument("--id", type=int, default=0)
parser.add_argument("--mode", default=os.environ.get("ET_TEST_MODE", "sleep"))
args = parser.parse_args()
me = os.environ.get("ET_EXEC_ID", f"ET-Test-{args.id}")


def say(text: str) -> None:
    print(f"{me}: {text}", flush=True)


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def term_exits(*_: object) -> None:
    say("got SIGTERM")
    sys.exit(0)


def spawn_stubborn(detach: bool) -> int:
    """Fork a SIGTERM-ignoring sleeper; detach = double fork + setsid (escapes our group and session)."""
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if detach:
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
        while True:
            time.sleep(3600)
    if detach:
        os.waitpid(pid, 0)
    return pid


def escapee(kind: str, detach: bool = False, close_fds: bool = False, clean_env: bool = False) -> None:
    """Fork a descendant that leaves our session; it reports its pid on our stdout first."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if detach and os.fork() > 0:
            os._exit(0)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        if clean_env:  # SIG_IGN survives exec: the sleeper ignores SIGTERM too
            os.execve("/bin/sleep", ["sleep", "31536000"], {})
        if close_fds:
            os.closerange(0, 65536)
        while True:
            time.sleep(3600)
    os.close(write_end)
    child = int(os.read(read_end, 32))
    os.close(read_end)
    if detach:
        os.waitpid(pid, 0)
    say(f"escapee {kind} pid={child}")


mode, _, rest = args.mode.partition(":")
# Dispositions first, so a test that saw the start line knows how a signal will be taken.
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode != "exit":
    signal.signal(signal.SIGTERM, term_exits)
say(f"started mode={args.mode} pid={os.getpid()} t={time.time():.3f} argv={sys.argv[1:]}")
if mode == "sleep":
    signal.signal(signal.SIGTERM, term_exits)
    sleep_forever()
elif mode == "exit":
    sys.exit(int(rest or 0))
elif mode == "exit-after":
    seconds, _, code = rest.partition(":")
    time.sleep(float(seconds))
    say("exiting")
    sys.exit(int(code or 0))
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleep_forever()
elif mode in ("grandchildren", "crash-leaving"):
    signal.signal(signal.SIGTERM, term_exits)
    spawn_stubborn(detach=False)
    spawn_stubborn(detach=True)
    say("children started")
    if mode == "crash-leaving":
        time.sleep(0.3)
        sys.exit(1)
    sleep_forever()
elif mode == "daemonize":
    # The classic daemon start: fork a setsid child and exit at once. The child is
    # re-parented to the supervisor only as this process dies. SIGTERM is left at its default:
    # a Python handler could take it just before the exec, and the exec'd program never sees it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "1000"])  # named "sleep", so tests can tell it from its parent
    sys.exit(1)
elif mode == "escapes":
    signal.signal(signal.SIGTERM, term_exits)
    escapee("setsid")
    escapee("double-fork", detach=True)
    escapee("closed-fds", close_fds=True)
    escapee("clean-env", clean_env=True)
    say("escapees started")
    sleep_forever()
elif mode == "crash-clean-env":
    escapee("clean-env", detach=True, clean_env=True)
    time.sleep(0.2)
    sys.exit(1)
elif mode == "chatty":
    signal.signal(signal.SIGTERM, term_exits)
    size = int(rest or 100)
    n = 0
    while True:
        n += 1
        sys.stdout.write(f"{n:012d} ".ljust(size - 1, "x") + "\n")
        if n % 100 == 0:
            sys.stdout.flush()
elif mode == "file":
    if open(rest).read().strip() == "crash":
        say("crashing as told")
        sys.exit(1)
    signal.signal(signal.SIGTERM, term_exits)
    sleep_forever()
else:
    say(f"unknown mode {args.mode}")
    sys.exit(3)
