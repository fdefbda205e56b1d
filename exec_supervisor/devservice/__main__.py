"""python -m exec_supervisor.devservice [port]"""

import sys

from .console import serve_forever

serve_forever(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8083)
