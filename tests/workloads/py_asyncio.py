#!/usr/bin/python3
# A real asyncio program: Debian's python3 and its asyncio event loop (epoll selector, its
# self-pipe socketpair, signal wakeup fd), nothing of crest's. Same protocol as the C workloads
# (workload.h): DIR as the argument, ready byte on fd 3, SIGTERM asks for the check, one verdict
# line on stdout.
#
# Set up and kept running through any number of checkpoints and restores:
#   - a TCP server on 127.0.0.1 (port from the kernel) answering each line "n" with "n n*n";
#   - two clients in the same loop, each keeping 4 requests in flight on its own connection and
#     checking every answer (the right n, in order, the right square): nothing lost, nothing twice;
#   - an eventfd written every 5 ms by one task and read through loop.add_reader by another;
#   - a 20 ms periodic timer (loop.call_later) counting ticks.
# Check, after SIGTERM reached the loop through loop.add_signal_handler: each client completes
# 200 more round trips after the check started; every answer so far was right; the server
# answered exactly what the clients sent; the eventfd's reader saw every write (its counter
# sums match); the timer still ticks; a new connection made now is served.
import asyncio
import os
import signal
import sys

failures = []


def expect(cond, why):
    if not cond:
        failures.append(why)
        os.write(2, ("# py_asyncio: check failed: %s\n" % why).encode())


class State:
    def __init__(self):
        self.served = 0          # requests the server answered
        self.sent = [0, 0]       # per client: requests sent
        self.answered = [0, 0]   # per client: right answers
        self.efd_written = 0
        self.efd_read = 0
        self.ticks = 0
        self.term = asyncio.Event()


async def serve(state, reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        n = int(line)
        state.served += 1
        writer.write(b"%d %d\n" % (n, n * n))
        await writer.drain()
    writer.close()


async def client(state, i, port, stop_after):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    in_flight = []
    n = i * 1000000

    async def one_answer():
        want = in_flight.pop(0)
        line = await reader.readline()
        got = line.split()
        if len(got) != 2 or int(got[0]) != want or int(got[1]) != want * want:
            expect(False, "client %d: asked %d, got %r" % (i, want, line))
        else:
            state.answered[i] += 1

    while True:
        while len(in_flight) < 4:
            n += 1
            writer.write(b"%d\n" % n)
            in_flight.append(n)
            state.sent[i] += 1
        await writer.drain()
        await one_answer()
        if stop_after[i] is not None and state.answered[i] >= stop_after[i]:
            break
        await asyncio.sleep(0.001)
    while in_flight:
        await one_answer()
    writer.close()
    await writer.wait_closed()


async def efd_writer(state, efd):
    while True:
        os.eventfd_write(efd, 3)
        state.efd_written += 3
        await asyncio.sleep(0.005)


def tick(loop, state):
    state.ticks += 1
    loop.call_later(0.02, tick, loop, state)


async def main(ready_fd):
    loop = asyncio.get_running_loop()
    state = State()
    loop.add_signal_handler(signal.SIGTERM, state.term.set)
    server = await asyncio.start_server(lambda r, w: serve(state, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def efd_readable():
        try:
            state.efd_read += os.eventfd_read(efd)
        except BlockingIOError:
            pass

    loop.add_reader(efd, efd_readable)
    writer_task = asyncio.create_task(efd_writer(state, efd))
    loop.call_later(0.02, tick, loop, state)
    stop_after = [None, None]
    clients = [asyncio.create_task(client(state, i, port, stop_after)) for i in range(2)]
    while min(state.answered) < 50:
        await asyncio.sleep(0.01)
    os.write(ready_fd, b"R")
    os.close(ready_fd)

    await state.term.wait()
    ticks_at_term = state.ticks
    for i in range(2):
        stop_after[i] = state.answered[i] + 200
    done, pending = await asyncio.wait(clients, timeout=30)
    expect(not pending, "clients did not finish 200 more round trips in 30 s")
    for t in done:
        if t.exception():
            expect(False, "client failed: %r" % t.exception())
    for i in range(2):
        expect(state.answered[i] == state.sent[i], "client %d: %d sent, %d answered right" %
               (i, state.sent[i], state.answered[i]))
    expect(state.served == sum(state.sent), "server answered %d, clients sent %d" %
           (state.served, sum(state.sent)))
    # A new connection now.
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    w.write(b"12\n")
    await w.drain()
    line = await asyncio.wait_for(r.readline(), 10)
    expect(line == b"12 144\n", "new connection answered %r" % line)
    w.close()
    # The eventfd: stop writing, let the reader drain it.
    writer_task.cancel()
    await asyncio.sleep(0.05)
    efd_readable()
    expect(state.efd_read == state.efd_written, "eventfd: %d written, %d read" %
           (state.efd_written, state.efd_read))
    await asyncio.sleep(0.1)
    expect(state.ticks > ticks_at_term, "the timer stopped ticking")
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until the loop's handler takes over
    try:
        asyncio.run(main(3))
    except Exception as e:  # a verdict line whatever happens
        failures.append("exception: %r" % e)
    print("PASS" if not failures else "FAIL: " + failures[0] + (" (+%d more)" % (len(failures) - 1) if len(failures) > 1 else ""), flush=True)
    sys.exit(0 if not failures else 1)
