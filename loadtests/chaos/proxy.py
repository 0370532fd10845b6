"""A TCP proxy between the stack's processes and a real server, which the soak can cut, black-hole or slow.

It runs as a process of its own (`python -m loadtests.chaos.proxy --target HOST:PORT`, driven by one-line
commands on stdin: `refuse`, `blackhole`, `restore`, `delay SECONDS`), so the stack's traffic never
waits on the soak's busy event loop; `ProxyProcess` is the soak's handle on one.

Every edge and worker reaches PostgreSQL and Redis through one of these (the soak's own checks connect
directly).  The faults it makes, without touching the server itself:

- `refuse()`: new connections are refused and open ones dropped (a server that went away);
- `blackhole()`: connections are accepted but nothing moves in either direction, open ones freeze (a
  network partition: callers wait for their own timeouts); `restore()` lets everything flow again;
- `delay_s`: every chunk is forwarded `delay_s` after it arrived, in order and without limiting
  throughput (a slow link or an overloaded server: latency, not a stall).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from enum import StrEnum

import uvloop


class ProxyMode(StrEnum):
    FLOWING = "flowing"
    REFUSING = "refusing"
    BLACKHOLED = "blackholed"


class TcpProxy:
    """Forwards 127.0.0.1:`port` (0: a free one, kept across refuse/restore) to `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.port = 0
        self.delay_s = 0.0
        self.mode = ProxyMode.REFUSING
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again, on the same port) and let data flow."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                      reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]
        self.mode = ProxyMode.FLOWING
        self._flowing.set()

    async def restore(self) -> None:
        await self.start()

    async def refuse(self) -> None:
        """Stop listening and drop every open connection."""
        self.mode = ProxyMode.REFUSING
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()
        self._flowing.set()  # frozen pumps wake up and find their sockets closed

    def blackhole(self) -> None:
        """Keep listening, move nothing: open connections freeze, new ones hang."""
        self.mode = ProxyMode.BLACKHOLED
        self._flowing.clear()

    async def close(self) -> None:
        await self.refuse()   # aborts every socket: the pumps end by themselves
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _drop_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        await self._flowing.wait()
        if self.mode is ProxyMode.REFUSING:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            return
        self._transports.add(up_writer.transport)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._transports.discard(w.transport)
            if task is not None:
                self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy src to dst; each chunk leaves `delay_s` after it arrived (a queue keeps the order and
        lets chunks overlap in flight, so a delay adds latency without capping throughput)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await src.read(65536):
                    queue.put_nowait((loop.time() + self.delay_s, data))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait((0.0, b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if self.mode is ProxyMode.REFUSING or dst.transport.is_closing():
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            dst.transport.abort()


class ProxyProcess:
    """The soak's handle on a proxy process: the same faults as `TcpProxy`, sent as commands."""

    def __init__(self, target_host: str, target_port: int, *, name: str) -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.port = 0
        self.delay_s = 0.0
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.chaos.proxy", "--target", f"{self.target[0]}:{self.target[1]}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.port = int((await self._reply()).split()[1])

    async def _reply(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        line = (await asyncio.wait_for(self._proc.stdout.readline(), timeout=60)).decode().strip()
        if not line:
            raise RuntimeError(f"the {self.name} proxy exited")
        return line

    async def _command(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode() + b"\n")
        await self._proc.stdin.drain()
        await self._reply()

    async def refuse(self) -> None:
        await self._command("refuse")

    async def blackhole(self) -> None:
        await self._command("blackhole")

    async def restore(self) -> None:
        await self._command("restore")

    async def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds
        await self._command(f"delay {seconds}")

    async def close(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            await self._command("quit")
        try:
            await asyncio.wait_for(self._proc.wait(), timeout=10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


async def _serve(target: str) -> None:
    host, _, port = target.rpartition(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    print(f"listening {proxy.port}", flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "refuse":
            await proxy.refuse()
        elif command == "blackhole":
            proxy.blackhole()
        elif command == "restore":
            await proxy.restore()
        elif command == "delay":
            proxy.delay_s = float(arg)
        elif command == "quit":
            print("ok", flush=True)
            break
        print("ok", flush=True)
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.chaos.proxy")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
