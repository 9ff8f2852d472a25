"""The adversarial catalog: what a hostile tenant tries, one case per line (or block), as data.

``test_attacks.py`` runs every case against a server of its own per sandbox, from the
attacker tenant, while the victim tenant keeps working; after each case it checks that
nothing was lost (see ``dataexec_testing.arena``). A case is one of:

- ``py(id, code, expect)``: a cell in the attacker's session;
- ``sql(id, query, expect, once=False)``: SQL in the attacker's session (or without one);
- ``http(id, method, path, expect, ...)``: a raw request;
- ``flood(id, case, copies)``: a case sent ``copies`` times at once.

``expect`` is an error type (``"SQL_NOT_ALLOWED"``), a tuple of types any of which is fine
(when the sandbox decides which way a bomb goes off), ``OK`` (any success), ``TRUE`` (the
cell's value must be ``True``: the code checks its own attack failed) or an HTTP status
(``http`` cases, e.g. ``401``). Placeholders in code and paths: ``{victim_key}``,
``{victim_session}``, ``{server_port}``, ``{state_dir}``.

Every cell starts with ``PRELUDE``: ``blocked(f)`` is True when calling ``f`` raises, and
``syscall(nr, *args)`` calls the C library's ``syscall`` (ints only) and answers its result.
"""

# fmt: off
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"
TRUE = "true"
KILLED = ("KERNEL_DIED", "OUT_OF_MEMORY", "EXECUTION_ERROR", "TIMEOUT")
FAILED = ("EXECUTION_ERROR", "SQL_NOT_ALLOWED")
SLOW = ("TIMEOUT", "EXECUTION_ERROR", "SQL_NOT_ALLOWED")

PRELUDE = """\
import os, ctypes, socket, threading
def blocked(f):
    try:
        f()
    except BaseException:
        return True
    return False
_libc = ctypes.CDLL(None, use_errno=True)
def syscall(nr, *args):
    return _libc.syscall(nr, *[ctypes.c_long(a) for a in args])
"""


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    kind: str  # py, sql, sql-once, http, flood
    payload: Any
    expect: Any
    options: dict[str, Any] = field(default_factory=dict)


CASES: list[Case] = []


def _add(case: Case) -> Case:
    CASES.append(case)
    return case


def py(id: str, code: str, expect: Any = TRUE, **options: Any) -> Case:
    """``options``: ``session``, ``then``, ``then_py`` (and ``then_py_may_lose_kernel``),
    ``absent``, ``during`` (see test_attacks.run_step)."""
    return _add(Case(id, id.split("/")[0], "py", code, expect, options))


def sql(id: str, query: str, expect: Any = FAILED, once: bool = False, **options: Any) -> Case:
    kind = "sql-once" if once else "sql"
    return _add(Case(id, id.split("/")[0], kind, query, expect, options))


def http(id: str, method: str, path: str, expect: int | tuple[int, ...], **options: Any) -> Case:
    """``options``: ``token`` (attacker, victim, operator, none or a raw header value),
    ``json``, ``content`` (raw body), ``headers``, ``error`` (the error type expected)."""
    return _add(Case(id, id.split("/")[0], "http", (method, path), expect, options))


def flood(id: str, case: Case, copies: int, **options: Any) -> Case:
    """``options``: ``must_see`` (a status at least one copy answers), ``cleanup`` (a request
    after the flood)."""
    CASES.remove(case)
    return _add(Case(id, id.split("/")[0], "flood", case, case.expect, {"copies": copies, **options}))


# --- escape: out of the sandbox to the host ----------------------------------------------
py("escape/read-shadow", "blocked(lambda: open('/etc/shadow').read())")
py("escape/list-root-home", "blocked(lambda: os.listdir('/root'))")
py("escape/write-usr", "blocked(lambda: open('/usr/lib/dx-owned', 'w'))")
py("escape/write-etc", "blocked(lambda: open('/etc/dx-owned', 'w'))")
py("escape/server-state-dir", "not os.path.exists('{state_dir}')")
py("escape/docker-socket", "not any(os.path.exists(p) for p in ('/var/run/docker.sock', '/run/docker.sock'))")
py("escape/host-processes", "len([p for p in os.listdir('/proc') if p.isdigit()]) < 16")
py("escape/capabilities", "int(open('/proc/self/status').read().split('CapEff:')[1].split()[0], 16) == 0")
py("escape/setuid-root", "blocked(lambda: os.setuid(0))")
py("escape/chroot", "blocked(lambda: os.chroot('/tmp'))")
# gVisor lets a node be made in its own tmpfs, but no host device is behind it (ENXIO).
py(
    "escape/mknod-device",
    "blocked(lambda: os.mknod('/tmp/mem', 0o600 | 0o020000, os.makedev(1, 1))) "
    "or blocked(lambda: open('/tmp/mem', 'rb').read(1))",
)
py("escape/sysrq", "blocked(lambda: open('/proc/sysrq-trigger', 'w').write('h'))")
py("escape/kmsg", "blocked(lambda: open('/dev/kmsg').read(1))")
py("escape/dev-mem", "blocked(lambda: open('/dev/mem', 'rb').read(1))")
py("escape/cgroup-write", "blocked(lambda: open('/sys/fs/cgroup/cgroup.procs', 'w').write('1'))")
py("escape/mount-tmpfs", "_libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0")
py("escape/nested-userns", "_libc.unshare(0x10000000) != 0")
py("escape/new-mount-ns", "_libc.unshare(0x00020000) != 0")
py("escape/new-net-ns", "_libc.unshare(0x40000000) != 0")
py(
    "escape/ptrace-child",
    """
pid = os.fork()
if pid == 0:
    import time; time.sleep(5); os._exit(0)
attached = _libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
os.kill(pid, 9); os.waitpid(pid, 0)
attached != 0
""",
)
py("escape/pip-install", "blocked(lambda: __import__('pip'))")
py("escape/host-env", "not any('DXTEST' in k or 'DATAEXEC_DATABASE' in k for k in os.environ)")
py("escape/shm-fill", "blocked(lambda: [open('/dev/shm/fill', 'ab').write(b'x' * 2**20) for _ in range(200)])")

# --- egress: the network, from inside -----------------------------------------------------
py("egress/server-port", "blocked(lambda: socket.create_connection(('127.0.0.1', {server_port}), 1))")
py("egress/private-range", "blocked(lambda: socket.create_connection(('10.0.0.1', 80), 1))")
py("egress/ipv6-loopback", "blocked(lambda: socket.create_connection(('::1', {server_port}), 1))")
py("egress/dns", "blocked(lambda: socket.getaddrinfo('pypi.org', 443))")
py("egress/udp", "blocked(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53)))")
py("egress/raw-socket", "blocked(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))")
py("egress/urllib", "blocked(lambda: __import__('urllib.request').request.urlopen('http://127.0.0.1:{server_port}/health', timeout=1))")
py("egress/postgres-direct", "blocked(lambda: socket.create_connection(('127.0.0.1', 5432), 1))")

# --- bomb: resources ------------------------------------------------------------------
py("bomb/memory-at-once", "x = bytearray(3 * 2**30)", KILLED)
py("bomb/memory-gradual", "l = []\nwhile True:\n    l.append(b'x' * 10**7)", KILLED)
py("bomb/fork", "while True:\n    os.fork()", KILLED)
py("bomb/threads", "for _ in range(5000):\n    threading.Thread(target=__import__('time').sleep, args=(30,)).start()", KILLED)
py("bomb/cpu-spin", "while True:\n    pass", "TIMEOUT")
py("bomb/tmp-fill", "blocked(lambda: [open('/tmp/fill', 'ab').write(b'x' * 2**20) for _ in range(200)])")
py("bomb/output-flood", "while True:\n    print('x' * 1000)", "OUTPUT_TOO_LARGE")
py("bomb/one-huge-output", "'y' * 50_000_000", "OUTPUT_TOO_LARGE")
py("bomb/recursion", "def f():\n    f()\nf()", ("EXECUTION_ERROR", "TIMEOUT"))  # IPython formats the 3,000 frames slowly
py("bomb/deep-recursion-segfault", "import sys; sys.setrecursionlimit(10**7)\ndef f():\n    f()\nf()", KILLED)
py("bomb/exit", "os._exit(3)", "KERNEL_DIED")
py("bomb/kill-self", "os.kill(os.getpid(), 9)", "KERNEL_DIED")
py(
    "bomb/categorical-json-download",
    "save(pd.DataFrame({'s': pd.Categorical.from_codes(np.zeros(300_000, 'int8'), ['x' * 10_000])}))",
    OK,
    then=("GET", "/cache/{result}?format=json", 400),
)
py(
    "bomb/categorical-csv-download",
    "save(pd.DataFrame({'s': pd.Categorical.from_codes(np.zeros(300_000, 'int8'), ['y' * 10_000])}))",
    OK,
    then=("GET", "/cache/{result}?format=csv", 400),
)
py("bomb/categorical-preview", "pd.DataFrame({'s': pd.Categorical.from_codes(np.zeros(50, 'int8'), ['z' * 1_000_000])})", OK)
# Under gVisor on a busy machine the frame can take longer than the arena's 6 s limit.
py(
    "bomb/wide-frame",
    "pd.DataFrame(np.zeros((2, 200_000)))",
    ("VALIDATION_ERROR", "OUTPUT_TOO_LARGE", "TIMEOUT", OK),
)
# The thread's output until the cell's idle is the cell's: on a busy machine it can pass the
# output cap first (the kernel is then replaced); either way a later cell answers. In CI
# (Docker, 2 runs of 3 on 2026-12-07, never locally in 4) the kernel's channel dropped
# early in the next cell instead, which answered OUTPUT_TOO_LARGE ("a single output message
# exceeded") and lost the kernel: the cell after it must answer. Why the channel dropped is
# not known (the kernel bounds a request's text to 64 Ki characters a message).
py(
    "bomb/daemon-printer",
    "threading.Thread(target=lambda: [print('x' * 100) for _ in iter(int, 1)], daemon=True).start()",
    (OK, "OUTPUT_TOO_LARGE"),
    then_py=("1 + 1", 2),
    then_py_may_lose_kernel="OUTPUT_TOO_LARGE",
)
py(
    "bomb/broker-flood",
    """
from concurrent.futures import ThreadPoolExecutor
q = 'SELECT count(*) FROM flights a, flights b WHERE a.dep_delay > b.dep_delay + 1000'
with ThreadPoolExecutor(64) as pool:
    answers = list(pool.map(lambda _: blocked(lambda: sql(q)), range(64)))
all(answers)
""",
    (TRUE, "TIMEOUT"),  # 64 queries two at a time may outlast the pool's 6 s: either is harmless
)
sql("bomb/sql-repeat-sessionless", "SELECT repeat('x', 500000000) AS big", ("OUTPUT_TOO_LARGE", "PAYLOAD_TOO_LARGE", "EXECUTION_ERROR"), once=True)
sql("bomb/sql-repeat-session", "SELECT repeat('x', 500000000) AS big", ("OUTPUT_TOO_LARGE", "PAYLOAD_TOO_LARGE", "EXECUTION_ERROR", "TIMEOUT"))
sql("bomb/sql-cross-join", "SELECT count(*) FROM flights a, flights b", SLOW)
sql("bomb/sql-sleep", "SELECT pg_sleep(600)", SLOW, once=True)
sql("bomb/sql-huge-sort", "SELECT * FROM generate_series(1, 300000000) g ORDER BY random()", SLOW, once=True)

# --- sql: writes and side effects past the guard and the read-only role ----------------------
sql("sql/insert", "INSERT INTO airlines VALUES ('XX', 'owned')")
sql("sql/delete", "DELETE FROM flights")
sql("sql/drop", "DROP TABLE flights")
sql("sql/truncate-once", "TRUNCATE flights", once=True)
sql("sql/cte-delete", "WITH d AS (DELETE FROM flights RETURNING *) SELECT count(*) FROM d")
sql("sql/stacked", "SELECT 1; DELETE FROM flights")
sql("sql/comment-stacked", "SELECT 1 /* ; */ ; UPDATE airlines SET name = 'owned'")
sql("sql/copy-program", "COPY (SELECT 1) TO PROGRAM 'id'")
sql("sql/read-server-file", "SELECT pg_read_file('/etc/passwd')")
sql("sql/lo-import", "SELECT lo_import('/etc/passwd')")
sql("sql/set-role", "SET ROLE postgres")
sql("sql/read-write-config", "SELECT set_config('default_transaction_read_only', 'off', false)")
sql("sql/terminate-backends", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity")
sql("sql/shadow", "SELECT * FROM pg_authid")
sql("sql/temp-table", "CREATE TEMP TABLE t AS SELECT 1")
sql("sql/function-side-effect", "SELECT nextval('flights_id_seq')")
py("sql/broker-delete", "blocked(lambda: sql('DELETE FROM flights'))")
py("sql/read-sql-delete", "blocked(lambda: pd.read_sql('DELETE FROM flights RETURNING 1', conn))")
py("sql/params-injection", "len(sql('SELECT :x AS v', {'x': \"1'; DELETE FROM flights; --\"})) == 1")
py("sql/read-sql-params", "int(pd.read_sql('SELECT %(n)s::int AS n', conn, params={'n': 3}).n[0]) == 3")

# --- cross: another tenant's data ---------------------------------------------------------
py("cross/load-victim-key", "blocked(lambda: load('{victim_key}'))")
http("cross/download-victim-key", "GET", "/cache/{victim_key}?format=csv", 404)
http("cross/meta-victim-key", "GET", "/cache/{victim_key}/meta", 404)
http("cross/delete-victim-key", "DELETE", "/cache/{victim_key}", 404)
http("cross/on-data-victim-key", "POST", "/execute-on-data", 404, json={"code": "result_df = df", "cache_keys": {"df": "{victim_key}"}})
http("cross/victim-session-variables", "GET", "/sessions/{victim_session}/variables", 404)
http("cross/victim-session-notebook", "GET", "/sessions/{victim_session}/notebook", 404)
http("cross/delete-victim-session", "DELETE", "/sessions/{victim_session}", 404)
py("cross/same-session-id", "'victim_df' not in globals()", session="{victim_session}")
py(
    "cross/forged-capture-key",
    "import dataexec_kernel.capture as capture\ncapture.broker.put = lambda *a, **k: '{victim_key}'\npd.DataFrame({'x': [1]})",
    OK,
    absent="{victim_key}",
)

# --- path: traversal in names -------------------------------------------------------------
http("path/cache-key-dotdot", "GET", "/cache/..%2F..%2Fstate", 404)
http("path/cache-key-format", "GET", "/cache/{victim_key}?format=../../etc/passwd", (400, 404))
http("path/session-id-dotdot", "POST", "/sessions", 400, json={"session_id": "../../etc"})
http("path/session-id-nul", "POST", "/sessions", 400, json={"session_id": "a\u0000b"})
http("path/session-id-long", "POST", "/sessions", 400, json={"session_id": "a" * 5000})
http("path/result-name", "POST", "/execute", 400, json={"code": "1", "result_name": "../x"})
http("path/pool-name", "POST", "/sessions", 400, json={"pool": "../default"})
http("path/url-encoded-session", "POST", "/sessions/..%2F..%2Fx/execute", 400, json={"code": "1"})

# --- auth: tokens ----------------------------------------------------------------------------
http("auth/no-token", "GET", "/sessions", 401, token="none")
http("auth/wrong-token", "GET", "/sessions", 401, token="Bearer not-a-token-of-anyone-here")
http("auth/basic-scheme", "GET", "/sessions", 401, token="Basic YWRtaW46YWRtaW4=")
http("auth/token-in-query", "GET", "/sessions?token={attacker_token}", 401, token="none")
http("auth/operator-runs-code", "POST", "/execute", (401, 403), token="operator", json={"code": "1"})
http("auth/tenant-reads-pools", "GET", "/pools", 403)
http("auth/forbidden-pool", "POST", "/sessions", 403, json={"pool": "victim"})
http("auth/health-details-hidden", "GET", "/health", 200, token="none", absent='"pools"')

# --- request: malformed and oversized requests ---------------------------------------------
http("request/bad-json", "POST", "/execute", 400, content=b"{", error="VALIDATION_ERROR")
http("request/json-array", "POST", "/execute", 400, json=[1, 2], error="VALIDATION_ERROR")
http("request/wrong-type", "POST", "/execute", 400, json={"code": 5}, error="VALIDATION_ERROR")
http("request/unknown-field", "POST", "/execute", 400, json={"code": "1", "tenant": "victim"}, error="VALIDATION_ERROR")
http("request/proto-field", "POST", "/execute", 400, json={"code": "1", "__proto__": {}}, error="VALIDATION_ERROR")
http("request/text-plain", "POST", "/execute", 415, content=b'{"code": "1"}', headers={"Content-Type": "text/plain"})
http("request/huge-body", "POST", "/execute", 413, content=b"x" * 17_500_000, error="PAYLOAD_TOO_LARGE")
http("request/huge-code", "POST", "/execute", 400, json={"code": "#" * 5_000_000}, error="VALIDATION_ERROR")
http("request/negative-max-rows", "POST", "/execute", 400, json={"code": "1", "max_rows": -1})
http("request/huge-max-rows", "POST", "/execute", 400, json={"code": "1", "max_rows": 10**12})
http("request/deep-json", "POST", "/execute", 400, content=b"[" * 100_000 + b"]" * 100_000)
http("request/deep-input-data", "POST", "/execute-on-data", 400, content=b'{"code": "1", "input_data": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}")
http("request/method", "PUT", "/execute", 405, json={"code": "1"})
http("request/unknown-path", "GET", "/admin/../../etc/passwd", 404, token="none")
http("request/huge-header", "GET", "/sessions", 431, headers={"X-Big": "h" * 1_000_000})
http("request/long-path", "GET", "/" + "p" * 65_480, 431, token="none")  # httpx sends at most 64 KiB of URL
flood("request/rate-flood", http("request/rate-one", "GET", "/sessions", (200, 429), token="flooder"), 150, must_see=429)

# --- race: one session from several requests at once ---------------------------------------
flood("race/parallel-executes", py("race/one-execute", "import time; time.sleep(0.3); True", (TRUE, "SESSION_BUSY")), 6)
flood("race/parallel-creates", http("race/one-create", "POST", "/sessions", (201, 409), json={"session_id": "race-create"}), 6, must_see=201, cleanup=("DELETE", "/sessions/race-create"))
py("race/delete-while-running", "import time; time.sleep(3)", ("CANCELLED", "KERNEL_DIED"), during=("DELETE", "/sessions/{session}"))
py("race/restart-while-running", "import time; time.sleep(30)", ("CANCELLED", "KERNEL_DIED"), during=("POST", "/sessions/{session}/restart"))
py("race/interrupt-while-running", "import time; time.sleep(30)", ("EXECUTION_ERROR", "CANCELLED"), during=("POST", "/sessions/{session}/interrupt"))

# --- kmsg: the kernel lies to the server ---------------------------------------------------
py(
    "kmsg/garbage-on-iopub",
    "k = get_ipython().kernel\nk.iopub_socket.send_multipart([b'garbage', b'<IDS|MSG>', b'x', b'{', b'{', b'{', b'{'])\n1",
    OK,
)
py(
    "kmsg/forged-result",
    "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'execute_result', {'data': {'text/plain': 'forged'}, 'metadata': {}, 'execution_count': 1}, parent=k.get_parent())\n2",
    OK,
)
py(
    "kmsg/early-idle",
    "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'status', {'execution_state': 'idle'}, parent=k.get_parent())\nimport time; time.sleep(1)\n3",
    (OK, "KERNEL_DIED", "EXECUTION_ERROR"),
)
py(
    "kmsg/huge-message",
    "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'x' * 60_000_000}, parent=k.get_parent())\n4",
    ("OUTPUT_TOO_LARGE", OK),
)
py(
    "kmsg/bad-user-expressions",
    "ip = get_ipython()\nip.user_expressions = lambda e: {n: {'status': 'ok', 'data': {'text/plain': '{not json'}} for n in e}\n5",
    ("KERNEL_DIED", "EXECUTION_ERROR", OK),
)
py("kmsg/close-shell", "get_ipython().kernel.shell_stream.close()", ("KERNEL_DIED", "TIMEOUT", "OUTPUT_TOO_LARGE"))

# --- frames: odd but legal frames answer data -------------------------------------------------
py("frames/duplicate-columns", "pd.DataFrame([[1, 2]], columns=['a', 'a'])", OK)
py("frames/none-column", "pd.DataFrame({None: [1], 'b': [2]})", OK)
py("frames/tuple-column", "pd.DataFrame({('a', 'b'): [1]})", OK)
py("frames/int-columns", "pd.DataFrame([[1, 2]])", OK)
py("frames/nul-column", "pd.DataFrame({'a\\x00b': [1]})", OK)
py("frames/huge-int", "pd.DataFrame({'x': [2**100]})", OK)
py("frames/huge-decimal", "import decimal\npd.DataFrame({'x': [decimal.Decimal('1e1000')]})", OK)
py("frames/bytes", "pd.DataFrame({'x': [b'\\x00\\xff']})", OK)
py("frames/dicts-and-lists", "pd.DataFrame({'d': [{'a': 1}], 'l': [[1, 2]]})", OK)
py("frames/dicts-csv", "save(pd.DataFrame({'d': [{'a': 1}]}))", OK, then=("GET", "/cache/{result}?format=csv", 200))
py(
    "frames/formula-csv",
    "save(pd.DataFrame({'f': ['=HYPERLINK(\"http://x\")', '+1', '-1', '@SUM(A1)']}))",
    OK,
    then=("GET", "/cache/{result}?format=csv", 200),
    absent_then="\n=HYPERLINK",
)
