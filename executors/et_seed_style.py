"""A plain executor in the seed's own style (seed/complex_tasks.md), no toolkit.

It shows that exec-supervisor does not need exec_supervisor.executor: this is
the seed's et_hello_world.py with only the fixes needed to run unattended:
- every request has a timeout (the seed's could hang forever);
- log() retries a few times with a short, growing pause instead of every 60 s
  forever, so a down service costs the work seconds, not hours;
- the seed's public-IP lookup (http://ifconfig.me/ip at every start) runs only when
  asked (--public-ip-url URL or $ET_PUBLIC_IP_URL) and cannot crash it when offline;
  by default it shows the local address used to reach the service, with no outside request;
- SIGTERM/SIGINT end it cleanly with status 0, even in the middle of a sleep;
- the seed's busy-wait loop (100% CPU for ~15 s) sleeps between checks.

    python executors/et_seed_style.py --service-host http://127.0.0.1:8083/ --id 0
"""

import argparse
import os
import random
import signal
import threading
import time

import requests

execution_side_name = 'SeedStyle'
parser = argparse.ArgumentParser(description=f'ExecTasks {execution_side_name}')
parser.add_argument(
    '--service-host',
    dest='service_host',
    type=str,
    default=os.environ.get('ET_SERVICE_HOST', 'http://127.0.0.1:8083/'),
    help='ServiceHost',
)
parser.add_argument(
    '--id',
    dest='id',
    type=int,
    default=int(os.environ.get('ET_ID', '0')),
    help='ID',
)
parser.add_argument(
    '--public-ip-url',
    dest='public_ip_url',
    type=str,
    default=os.environ.get('ET_PUBLIC_IP_URL') or None,
    help='look up the public IP there at start (default: $ET_PUBLIC_IP_URL; unset: the local address)',
)
args = parser.parse_args()
exec_id = f'ET-{execution_side_name}-{args.id}'


# FIX: SIGTERM (what a supervisor sends) and Ctrl-C end the script with status 0,
# a 6-minute sleep included. The handler only sets a flag: an exception raised from
# a signal handler is silently lost when it lands in a finalizer (a closing socket's
# __del__, say), and the script would then sleep on.
stop = threading.Event()


def on_signal(signum, frame):
    stop.set()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

TIMEOUT = (3.05, 10)  # FIX: connect / read timeouts; the seed had none
ATTEMPTS = 3          # FIX: bounded retries so log() never blocks the work for long


def service_request(method: str, path: str = 'api/', data=None, host: str = args.service_host, headers=None, is_repeat: bool = True, **kw):
    if headers is None:
        if method == 'GET':
            headers = {}
        else:
            headers = {'content-type': 'application/json'}
    token = os.environ.get('ET_SERVICE_TOKEN')
    if token:
        headers['Authorization'] = f'Bearer {token}'
    if data is None:
        data = {}
    if '//' not in path:
        url = f'{host}{path}'
    else:
        url = path
    kw.setdefault('timeout', TIMEOUT)
    attempt = 0
    while True:
        attempt += 1
        err_str = ''
        res = None
        final = False
        try:
            if method == 'POST':
                res = requests.post(url=url, json=data, headers=headers, **kw)
            elif method == 'DELETE':
                res = requests.delete(url=url, json=data, headers=headers, **kw)
            elif method == 'PUT':
                res = requests.put(url=url, json=data, headers=headers, **kw)
            else:
                res = requests.get(url=url, params=data, headers=headers, **kw)
            if res.status_code == 200:
                return res, err_str
            else:
                err_str = f'服务响应异常: {res.status_code} {res.reason} {res.text}'
                if res.status_code == 401:
                    err_str += ' (请将本机IP添加到服务的令牌豁免 IP 网络列表或令牌豁免 IP 主机列表, 本地调试时可能是127.0.0.1; 或设置 ET_SERVICE_TOKEN)'
                # FIX: a refusal (401, 422...) is not retried: it would be refused again
                final = res.status_code < 500 and res.status_code != 429
        except requests.exceptions.Timeout:  # FIX: also read timeouts (ConnectTimeout is a subclass)
            err_str = '服务请求异常: 连接超时或读取超时'
        except requests.exceptions.ConnectionError:
            err_str = '服务请求异常: 未知服务或网络异常'
        except Exception as err:
            err_str = f'服务请求异常: {err}'
        print(err_str, flush=True)
        if final or not is_repeat or attempt >= ATTEMPTS or stop.is_set():
            return res, err_str
        stop.wait(2 ** (attempt - 1) * random.uniform(0.5, 1.0))  # FIX: ~1 s, ~2 s instead of 60 s


def log(level: str, message: str):
    """ 提交日志 level=debug|info|warning|error """
    print(f'[{level}] {exec_id}: {message}', flush=True)
    service_request(method='POST', path='api/bases/logs/', data={'level': level, 'message': f'{exec_id}: {message}'})


def get_local_ip() -> str:
    # FIX: the address this host uses to reach the service (what its token-exempt list
    # needs). A UDP connect sends no packet: the kernel only picks the route.
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(args.service_host)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parts.hostname or '127.0.0.1', parts.port or 80))
            return s.getsockname()[0]
    except OSError:
        return '127.0.0.1'


def get_public_ip() -> str:
    # FIX: the seed asked ifconfig.me at every start; now only when a URL is given,
    # and offline the seed crashed here: fall back to the local address.
    if not args.public_ip_url:
        return get_local_ip()
    try:
        return requests.get(args.public_ip_url, timeout=1).text.strip()
    except Exception:
        return get_local_ip()


seconds = int(time.time())
public_ip = get_public_ip()
log('debug', f'已启动 {public_ip}')
while not stop.is_set():
    if int(time.time()) - seconds > random.randint(13, 23):
        try:
            print('Hello World', flush=True)
            stop.wait(360)
        except Exception as e:
            log('error', str(e))
        seconds = int(time.time())
    else:
        stop.wait(1)  # FIX: the seed spun at 100% CPU here
print(f'[debug] {exec_id}: stopping', flush=True)
