"""One running kernel (sandboxed process, kernel dir, client) and the launcher that makes it.

``Kernel.run`` turns every way a cell can go wrong into our errors and records whether the
kernel survived: after a timeout that an interrupt did not end, an output flood, a memory
kill or a crash, ``Kernel.lost`` names why and the session gets a fresh kernel next time.
A kernel shut down while a cell runs in it (its session deleted or restarted, the server
stopping) stops that cell at once: ``run`` answers ``Cancelled`` with ``Kernel.lost`` as the
reason, whoever shut it down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import zmq
from dataexec_kernel import protocol

from server.config import PoolSettings, Settings
from server.errors import (
    Cancelled,
    DataExecError,
    ExecutionTimeout,
    KernelDied,
    OutOfMemory,
    OutputTooLarge,
)
from server.kernels.client import (
    ChannelLost,
    Execution,
    ExecutionTimedOut,
    KernelClient,
    OnOutput,
)
from server.kernels.kerneldir import KernelDir, new_connection_info
from server.kernels.sandbox import ENV_ALLOW_LIST, LaunchSpec, Limits, Sandbox, SandboxedKernel

log = logging.getLogger(__name__)

# Room for protocol framing on top of the output cap in a single ZMQ message.
MESSAGE_OVERHEAD = 64 * 1024
# Run once before a kernel counts as warm: the first cell of a fresh kernel pays ~100 ms for
# lazy imports of the display and traceback machinery that no session should pay for. It
# formats a traceback, displays a frame, and resets the counter so the session's first cell
# is In[1].
WARM_UP_CODE = """\
try:
    1 / 0
except ZeroDivisionError:
    get_ipython().InteractiveTB.structured_traceback(*__import__('sys').exc_info())
get_ipython().execution_count = 1
pd.DataFrame({'a': [1.0]}).describe()
"""
# Drawn in an idle kernel of a pool with ``warm_charts`` (when, the pool decides): what a
# session's first chart would pay (pyplot's import, ~0.4 s; the inline backend, fonts and a
# PNG, ~0.1 s), leaving no name behind. A request that takes the kernel meanwhile waits for
# it in ``Kernel.run``.
WARM_UP_CHART_CODE = """\
__import__('matplotlib.pyplot').pyplot.plot([0, 1])
__import__('matplotlib.pyplot').pyplot.show()
"""
CHART_WARM_UP_OUTPUT_LIMIT = 1 << 20  # its PNG is about 10 KiB
WARM_UP_EXPRESSIONS = {protocol.EXPRESSION: protocol.result_expression(1)}


class Kernel:
    """A kernel given to at most one session, once; destroyed, never handed back."""

    def __init__(
        self,
        kernel_id: str,
        pool: PoolSettings,
        process: SandboxedKernel,
        kernel_dir: KernelDir,
        client: KernelClient,
        interrupt_grace: float,
    ) -> None:
        self.kernel_id = kernel_id
        self.pool = pool
        self.process = process
        self.kernel_dir = kernel_dir
        self.client = client
        self.created = time.time()
        self.lost: str | None = None  # why the kernel can no longer be used
        self.interrupt_grace = interrupt_grace
        self._closed = False
        self._execution: asyncio.Future[Execution] | None = None  # the cell running now
        self._warming: asyncio.Future[Execution] | None = None  # the chart warm-up, till run
        self.charts_warm = False  # the chart warm-up ran or runs

    @property
    def broker_socket(self) -> Path:
        """Where the kernel looks for its broker (in the server-owned, read-only part)."""
        return self.kernel_dir.srv / protocol.BROKER_SOCKET

    async def alive(self) -> bool:
        """Whether the kernel runs (asks the sandbox: a system call, or an engine request)."""
        return self.lost is None and await self.process.poll() is None

    async def usable(self) -> bool:
        """Whether the kernel can take a request; asks the sandbox only if a channel dropped.

        Called on every request, so it must be cheap: with Docker, ``alive`` is an engine
        round trip of a few milliseconds.
        """
        if self.lost is not None or self.process.known_gone():
            return False
        return not self.client.channels_lost() or await self.alive()

    def interrupt(self) -> None:
        """Ask the kernel to interrupt its running cell (the cell answers as interrupted)."""
        self.client.interrupt()

    async def death_reason(self) -> str:
        """Why a kernel that is no longer usable went: ``out_of_memory``, or ``kernel_died``
        (or the reason it was discarded for)."""
        if self.lost is not None:
            return self.lost
        return "out_of_memory" if await self.process.oom_killed() else "kernel_died"

    def warm_up_charts(self) -> None:
        """Draw one chart in the background (``WARM_UP_CHART_CODE``), once; ``run`` waits
        for it. Only for a kernel that no session has used."""
        if self.charts_warm or self._closed:
            return
        self.charts_warm = True
        chart = self.client.execute(
            WARM_UP_CHART_CODE,
            {},
            self.pool.timeout_s,
            CHART_WARM_UP_OUTPUT_LIMIT,
            self.alive,
            silent=True,
        )
        self._warming = warming = asyncio.ensure_future(chart)
        warming.add_done_callback(self._warmed)

    def _warmed(self, warming: asyncio.Future[Execution]) -> None:
        if warming.cancelled():
            return
        failed = warming.exception() or warming.result().error
        if failed and not self._closed:
            # The first chart will pay for it; no cell's concern (a kernel image without
            # matplotlib, say: turn warm_charts off for it).
            log.warning("chart warm-up of kernel %s failed: %r", self.kernel_id[:12], failed)

    async def run(
        self,
        code: str,
        user_expressions: dict[str, str],
        output_limit: int,
        silent: bool = False,
        on_output: OnOutput | None = None,
    ) -> Execution:
        """Execute ``code`` within the pool's timeout, mapping every failure to our errors.

        ``silent`` runs it outside the history (no count, no pre/post-cell hooks);
        ``on_output`` is handed each output as it arrives (a streaming request).
        """
        timeout = self.pool.timeout_s
        if self._warming is not None:
            await asyncio.wait([self._warming])  # its outcome is no concern of this cell
            self._warming = None
        if self._closed:
            raise self._shut_down()
        # A task of its own, so that ``shutdown`` can stop it without cancelling the caller.
        self._execution = execution = asyncio.ensure_future(
            self.client.execute(
                code,
                user_expressions,
                timeout,
                output_limit,
                self.alive,
                silent=silent,
                on_output=on_output,
            )
        )
        try:
            return await execution
        except ExecutionTimedOut:
            stopped = await self.stop_running_cell()
            if self._closed and self.lost != "timeout":
                raise self._shut_down() from None
            raise ExecutionTimeout(
                f"execution exceeded the {timeout:g} s limit and was "
                + ("interrupted" if stopped else "killed with its kernel")
            ) from None
        except OutputTooLarge:
            await self.discard("output_too_large")
            raise
        except ChannelLost:
            if self._closed:
                raise self._shut_down() from None
            raise await self._death_error(output_limit) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                raise self._shut_down() from None  # shutdown() stopped the cell, not our caller
            # The client went away: stop the cell so the kernel is free for the next request.
            await asyncio.shield(self.stop_running_cell())
            raise
        finally:
            self._execution = None

    def _shut_down(self) -> Cancelled:
        reason = self.lost or "shut_down"
        return Cancelled(f"the cell's kernel was shut down while it ran ({reason})", reason=reason)

    async def stop_running_cell(self) -> bool:
        """Interrupt the running cell; kill the kernel if it does not stop. True if it stopped."""
        if self._closed:
            return False
        self.interrupt()
        try:
            if await self.client.wait_idle(self.interrupt_grace):
                return True
        except zmq.ZMQError:  # shut down meanwhile: its channels were closed under us
            if not self._closed:
                raise
            return False
        await self.discard("timeout")
        return False

    async def _death_error(self, output_limit: int) -> DataExecError:
        """Why the channel dropped: OOM kill, a crash, or a message over the size cap."""
        for _ in range(50):
            if await self.process.poll() is not None:
                break
            await asyncio.sleep(0.02)
        else:
            await self.discard("output_too_large")
            return OutputTooLarge(
                f"a single output message exceeded the {output_limit}-byte output limit"
            )
        if await self.process.oom_killed():
            await self.discard("out_of_memory")
            return OutOfMemory(
                f"the kernel exceeded its {self.pool.memory_mb} MiB memory limit and was killed"
            )
        await self.discard("kernel_died")
        return KernelDied("the kernel died during execution")

    async def discard(self, reason: str) -> None:
        """Mark the kernel unusable for ``reason`` and destroy it."""
        self.lost = self.lost or reason
        await self.shutdown()

    async def shutdown(self) -> None:
        """Destroy the kernel: close channels, kill the sandbox, remove its directory."""
        if self._closed:
            return
        self._closed = True
        self.lost = self.lost or "shut_down"
        if self._execution is not None:
            self._execution.cancel()  # its ``run`` answers Cancelled
        if self._warming is not None:
            self._warming.cancel()
        self.client.close()
        try:
            await self.process.kill()
        finally:
            await asyncio.to_thread(self.kernel_dir.remove)


class KernelLauncher:
    """Starts ready kernels in the configured sandbox."""

    def __init__(
        self, settings: Settings, sandbox: Sandbox, lib_dir: Any, env: dict[str, str]
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.lib_dir = lib_dir
        self.env = {k: v for k, v in env.items() if k in ENV_ALLOW_LIST}
        self.context: zmq.Context[Any] = zmq.Context()
        # Starting a kernel is ~0.75 s of cpu: more starts at once than cores only makes
        # every waiter wait for the slowest (measured: a burst of 10 all answered at ~4 s).
        self.starting = asyncio.Semaphore(os.cpu_count() or 1)

    async def start(self, pool: PoolSettings) -> Kernel:
        """Start one kernel of ``pool`` and return it once it answers (pandas imported)."""
        async with self.starting:
            return await self._start(pool)

    async def _start(self, pool: PoolSettings) -> Kernel:
        kernel_id = uuid.uuid4().hex
        limits = Limits.of_pool(pool)
        kernel_dir = await asyncio.to_thread(
            KernelDir.create,
            self.settings.runtime_dir,
            kernel_id,
            self.settings.kernel_uid,
            limits.rw_bytes,
        )
        process: SandboxedKernel | None = None
        client: KernelClient | None = None
        try:
            info = new_connection_info(kernel_dir)
            kernel_dir.write_connection_file(info)
            spec = LaunchSpec(
                kernel_id=kernel_id,
                kernel_dir=kernel_dir.root,
                lib_dir=self.lib_dir,
                limits=limits,
                pool=pool.name,
                env=self.env,
            )
            process = await self.sandbox.launch(spec)
            client = KernelClient(
                info, self.context, self.settings.output_limit_bytes + MESSAGE_OVERHEAD
            )
            kernel = Kernel(
                kernel_id, pool, process, kernel_dir, client, self.settings.interrupt_grace_s
            )
            await client.wait_ready(self.settings.kernel_start_timeout_s, kernel.alive)
            await client.execute(
                WARM_UP_CODE,
                WARM_UP_EXPRESSIONS,
                self.settings.kernel_start_timeout_s,
                self.settings.output_limit_bytes,
                kernel.alive,
            )
            kernel.charts_warm = self.sandbox.charts_warm_at_start
            return kernel
        except BaseException as exc:
            detail = getattr(process, "stderr_text", lambda: "")()
            log.error("kernel %s failed to start: %s %s", kernel_id[:12], exc, detail[-2000:])
            if client is not None:
                client.close()
            if process is not None:
                await process.kill()
            await asyncio.to_thread(kernel_dir.remove)
            raise

    def close(self) -> None:
        self.context.term()
