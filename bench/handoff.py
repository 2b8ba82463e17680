"""What handing a frame from a reader thread to trio costs trio's thread: trio.from_thread.run against the
run_sync_soon callback OpenCvSource uses (edgebox/cameras/opencv_source.py, HANDOFF_FRAMES).

    .venv/bin/python bench/handoff.py                      # 50 readers, 20,000 frames each way, 3 rounds
    .venv/bin/python bench/handoff.py --readers 10 --frames 5000 --rounds 5

Each round runs both ways one after the other in one trio run: `--readers` threads hand over `--frames` small
arrays in all through one-place channels, and a trio task per reader takes them, as a camera runner does. It
prints, per frame, the CPU time of trio's thread (time.thread_time() measured on it) and of the whole process,
and the ratio of the two ways. No camera, no decoding: only the crossing, which is all that differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np
import trio


class FromThreadRun:
    """The reader waits in trio.from_thread.run(send): a trio task per frame, the reader blocked on its result."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.send, self.receive = trio.open_memory_channel[np.ndarray](1)
        self.token = token

    def hand_over(self, frame: np.ndarray) -> None:
        trio.from_thread.run(self.send.send, frame, trio_token=self.token)

    async def take(self) -> np.ndarray:
        return await self.receive.receive()


class SemaphoreCallback:
    """OpenCvSource's way: the reader takes a place from a semaphore and hands the frame over in one callback."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.send, self.receive = trio.open_memory_channel[np.ndarray](1)
        self.token = token
        self.room = threading.Semaphore(1)

    def hand_over(self, frame: np.ndarray) -> None:
        self.room.acquire()
        self.token.run_sync_soon(self.send.send_nowait, frame)

    async def take(self) -> np.ndarray:
        frame = await self.receive.receive()
        self.room.release()
        return frame


async def measure(kind: type, readers: int, frames: int) -> tuple[float, float]:
    """Trio-thread and process CPU microseconds per frame handed over."""
    token = trio.lowlevel.current_trio_token()
    lanes = [kind(token) for _ in range(readers)]
    per_reader = frames // readers
    frame = np.zeros((4, 4, 3), np.uint8)

    def read(lane) -> None:
        for _ in range(per_reader):
            lane.hand_over(frame)

    async def consume(lane) -> None:
        for _ in range(per_reader):
            await lane.take()

    threads = [threading.Thread(target=read, args=(lane,), daemon=True) for lane in lanes]
    trio_cpu, process_cpu = time.thread_time(), time.process_time()
    async with trio.open_nursery() as nursery:
        for lane in lanes:
            nursery.start_soon(consume, lane)
        for thread in threads:
            thread.start()
    trio_cpu, process_cpu = time.thread_time() - trio_cpu, time.process_time() - process_cpu
    for thread in threads:
        thread.join()
    done = per_reader * readers
    return trio_cpu / done * 1e6, process_cpu / done * 1e6


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float]]] = {"from_thread.run": [], "semaphore + run_sync_soon": []}
    for _ in range(args.rounds):
        results["from_thread.run"].append(await measure(FromThreadRun, args.readers, args.frames))
        results["semaphore + run_sync_soon"].append(await measure(SemaphoreCallback, args.readers, args.frames))
    print(f"$ python bench/handoff.py {' '.join(sys.argv[1:])}")
    print(f"{args.readers} reader threads, {args.frames} frames per way and round, {args.rounds} rounds; medians")
    print("| hand-over | trio thread CPU per frame | process CPU per frame |")
    print("|---|---|---|")
    medians = {}
    for name, rows in results.items():
        trio_us = statistics.median(r[0] for r in rows)
        process_us = statistics.median(r[1] for r in rows)
        medians[name] = (trio_us, process_us)
        print(f"| {name} | {trio_us:.1f} us | {process_us:.1f} us |")
    old, new = medians["from_thread.run"], medians["semaphore + run_sync_soon"]
    print(f"ratio (semaphore + run_sync_soon / from_thread.run): trio thread {new[0] / old[0]:.2f}, "
          f"process {new[1] / old[1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(main, parser.parse_args())
