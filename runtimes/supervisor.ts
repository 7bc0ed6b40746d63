// The supervisor: main thread of one sandbox Deno process. Runs no untrusted code.
//
// It talks to the host over a Unix socket (the only thing this process may open besides
// Pyodide's assets), keeps spare Web Workers ready (each a fresh V8 isolate restored from a
// Pyodide memory snapshot), hands one worker to each run or session, relays host calls, and
// terminates workers on timeout, cancel, memory blow-up or misbehaviour. stdin is /dev/null and
// stdout is never read by the host as protocol: sandboxed code can reach both.
//
// Frames both ways: 4-byte big-endian length + UTF-8 JSON.

// deno-lint-ignore no-explicit-any
type Any = any;

const cfg = JSON.parse(Deno.args[0]);
const SOCKET: string = cfg.socket;
const SPARES: number = Math.max(1, Number(cfg.spares) || 1);
const MAX_FRAME = 16 * 1024 * 1024;
const INIT_TIMEOUT_MS = Number(cfg.initTimeoutMs) || 60_000;
const ASSETS = new URL("./node_modules/pyodide/", import.meta.url).pathname;
const WORKER_URL = new URL("./worker.ts", import.meta.url);
const RUNNER = await Deno.readTextFile(new URL("./sandbox_runner.py", import.meta.url));

const enc = new TextEncoder();
const dec = new TextDecoder();
const conn = await Deno.connect({ transport: "unix", path: SOCKET });

let writing: Promise<void> = Promise.resolve();
function send(msg: Any) {
  const body = enc.encode(JSON.stringify(msg));
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  writing = writing.then(async () => {
    let off = 0;
    while (off < frame.length) off += await conn.write(frame.subarray(off));
  }).catch(() => Deno.exit(3));
}

// ---- workers -------------------------------------------------------------------------------

type Slot = {
  w: Worker;
  ready: boolean;
  dead: boolean;
  run: Run | null;
  sid: string | null;
};

type Run = {
  id: string;
  slot: Slot | null;
  sid: string | null;
  timer: ReturnType<typeof setTimeout> | undefined;
  cancelled: boolean;
  budget: number;
  used: number;
  memLimit: number;
  msg: Any;
  t0: number;
};

let snapshot: Uint8Array | null = null;
let wasmModule: WebAssembly.Module | null = null;
const spares: Slot[] = [];
const waiters: ((s: Slot) => void)[] = [];
const sessions = new Map<string, Slot>();
const runs = new Map<string, Run>();
let creating = 0;
const live = new Set<Slot>(); // every worker not yet terminated

const PERMISSIONS = {
  read: [ASSETS],
  write: false,
  net: false,
  env: false,
  run: false,
  ffi: false,
  sys: false,
  import: false,
};

function newWorker(): Worker {
  return new Worker(WORKER_URL, {
    type: "module",
    // deno-lint-ignore no-explicit-any
    deno: { permissions: PERMISSIONS } as any,
  } as WorkerOptions);
}

function kill(slot: Slot) {
  if (slot.dead) return;
  slot.dead = true;
  live.delete(slot);
  slot.w.terminate();
  if (slot.sid !== null && sessions.get(slot.sid) === slot) sessions.delete(slot.sid);
}

function finish(run: Run, msg: Any) {
  if (!runs.has(run.id)) return;
  runs.delete(run.id);
  clearTimeout(run.timer);
  const slot = run.slot;
  if (slot) slot.run = null;
  send({ t: "done", id: run.id, ...msg });
}

function onWorkerMessage(slot: Slot, m: Any) {
  if (!m || typeof m !== "object") return;
  const run = slot.run;
  if (!run) return; // nothing is expected from an idle worker
  if (m.t === "out") {
    if (run.used >= run.budget) return;
    const line = String(m.line).slice(0, run.budget - run.used);
    run.used += line.length + 1;
    send({ t: "event", id: run.id, stream: m.stream === "stderr" ? "stderr" : "stdout", line });
  } else if (m.t === "call") {
    send({ t: "host_call", id: run.id, call: Number(m.call), op: String(m.op), args: String(m.args) });
  } else if (m.t === "done") {
    const heap = Number(m.heap) || 0;
    const keep = run.sid !== null && !m.fatal && heap <= run.memLimit;
    if (!keep) kill(slot);
    finish(run, {
      status: m.fatal ? "fatal" : "ok",
      reply: String(m.reply),
      truncated: Boolean(m.truncated) || run.used >= run.budget,
      heap,
      dropped: run.sid !== null && !keep, ms: m.ms, sup: performance.now() - run.t0,
    });
  }
}

function onWorkerFailure(slot: Slot, why: string) {
  const run = slot.run;
  kill(slot);
  const i = spares.indexOf(slot);
  if (i >= 0) spares.splice(i, 1);
  if (run) finish(run, { status: "crashed", reason: why, dropped: run.sid !== null });
  refill();
}

function createSpare(): Promise<void> {
  creating++;
  return new Promise<void>((resolve) => {
    const slot: Slot = { w: newWorker(), ready: false, dead: false, run: null, sid: null };
    live.add(slot);
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      clearTimeout(t);
      creating--;
      resolve();
    };
    const t = setTimeout(() => {
      send({ t: "log", msg: "worker start timed out" });
      kill(slot);
      startFailed();
      done();
    }, INIT_TIMEOUT_MS);
    slot.w.onmessage = (e) => {
      const m = e.data;
      if (!slot.ready && m && m.t === "ready") {
        slot.ready = true;
        startFailures = 0;
        slot.w.onmessage = (e2) => onWorkerMessage(slot, e2.data);
        done();
        const waiter = waiters.shift();
        if (waiter) waiter(slot);
        else spares.push(slot);
      } else if (!slot.ready) {
        send({ t: "log", msg: `worker failed to start: ${String(m?.message).slice(0, 2000)}` });
        kill(slot);
        startFailed();
        done();
      }
    };
    slot.w.onerror = (e) => {
      e.preventDefault();
      if (!slot.ready) {
        kill(slot);
        startFailed();
        done();
        return;
      }
      onWorkerFailure(slot, `uncaught error in the sandbox: ${String(e.message).slice(0, 500)}`);
    };
    slot.w.onmessageerror = () => onWorkerFailure(slot, "unreadable message from the sandbox");
    slot.w.postMessage({ t: "init", mode: "restore", snap: snapshot, mod: wasmModule });
  });
}

// Isolates that cannot start will not start on retry either: exit so the host respawns us
// (with backoff) instead of spinning here.
let startFailures = 0;
function startFailed() {
  if (++startFailures >= 3) {
    send({ t: "log", msg: "isolates keep failing to start; exiting" });
    setTimeout(() => Deno.exit(5), 50);
  }
}

let refilling = false;
async function refill() {
  if (refilling) return;
  refilling = true;
  try {
    // One start at a time: starting an isolate costs ~130 ms of CPU that runs should get first.
    while (spares.length + creating < SPARES + waiters.length) await createSpare();
  } finally {
    refilling = false;
  }
}

function takeSpare(): Promise<Slot> {
  const slot = spares.shift();
  const p = slot ? Promise.resolve(slot) : new Promise<Slot>((r) => waiters.push(r));
  // Start the replacement after the run has been handed over, not in front of it.
  setTimeout(refill, slot ? 5 : 0);
  return p;
}

async function makeSnapshot(): Promise<void> {
  const w = newWorker();
  const snap = await new Promise<Uint8Array>((resolve, reject) => {
    w.onmessage = (e) => e.data?.t === "snapshot" ? resolve(e.data.snap) : reject(new Error(String(e.data?.message)));
    w.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    w.postMessage({ t: "init", mode: "snapshot", runner: RUNNER });
  });
  w.terminate();
  // Shared, read-only by convention: each worker copies it into its own wasm memory.
  const shared = new Uint8Array(new SharedArrayBuffer(snap.length));
  shared.set(snap);
  snapshot = shared;
  wasmModule = await WebAssembly.compile(await Deno.readFile(ASSETS + "pyodide.asm.wasm"));
}

// ---- host messages -------------------------------------------------------------------------

async function startRun(m: Any) {
  const id = String(m.id);
  const sid = m.sid === null || m.sid === undefined ? null : String(m.sid);
  const run: Run = {
    id, slot: null, sid, timer: undefined, cancelled: false,
    budget: Math.max(0, Number(m.maxOut) || 0), used: 0,
    memLimit: Math.max(1, Number(m.memoryMb) || 256) * 1024 * 1024, msg: m, t0: performance.now(),
  };
  runs.set(id, run);
  let slot = sid !== null ? sessions.get(sid) ?? null : null;
  if (slot && (slot.run || slot.dead)) {
    finish(run, { status: "crashed", reason: "session is busy or gone", dropped: false });
    return;
  }
  if (!slot) {
    slot = await takeSpare();
    if (run.cancelled) {
      spares.unshift(slot); // never ran anything: still a clean spare
      return;
    }
    if (sid !== null) {
      slot.sid = sid;
      sessions.set(sid, slot);
    }
  }
  run.slot = slot;
  slot.run = run;
  send({ t: "started", id });
  run.timer = setTimeout(() => {
    kill(slot);
    finish(run, { status: "timeout", dropped: sid !== null });
  }, Math.max(1, Number(m.timeoutMs) || 1));
  slot.w.postMessage({
    t: "run", source: String(m.source), inputs: String(m.inputs),
    sdk: m.sdk === null ? null : String(m.sdk), rev: String(m.rev ?? ""), session: sid !== null,
    maxOut: run.budget, maxResult: Number(m.maxResult) || 1048576,
  });
}

function onHost(m: Any) {
  if (m.t === "run") {
    startRun(m).catch((e) => send({ t: "log", msg: String(e) }));
  } else if (m.t === "host_result") {
    const run = runs.get(String(m.id));
    if (run?.slot && !run.slot.dead) run.slot.w.postMessage({ t: "reply", call: m.call, reply: String(m.reply) });
  } else if (m.t === "cancel") {
    const run = runs.get(String(m.id));
    if (!run) return;
    run.cancelled = true;
    if (run.slot) {
      kill(run.slot);
      refill();
      finish(run, { status: "cancelled", dropped: run.sid !== null });
    } else {
      runs.delete(run.id);
      send({ t: "done", id: run.id, status: "cancelled", dropped: false });
    }
  } else if (m.t === "close_session") {
    const slot = sessions.get(String(m.sid));
    if (slot && !slot.run) kill(slot);
  } else if (m.t === "stats") {
    send({
      t: "stats", id: String(m.id), spares: spares.length, creating, sessions: sessions.size,
      runs: runs.size, workers: live.size,
    });
  }
}

async function readLoop() {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  while (true) {
    const n = await conn.read(chunk);
    if (n === null) break;
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
      if (len > MAX_FRAME) Deno.exit(4);
      if (buf.length < 4 + len) break;
      const msg = JSON.parse(dec.decode(buf.subarray(4, 4 + len)));
      buf = buf.slice(4 + len);
      onHost(msg);
    }
  }
  Deno.exit(0); // the host went away: nothing may outlive it
}

send({ t: "hello", pid: Deno.pid });
const t0 = performance.now();
await makeSnapshot();
await refill();
send({ t: "ready", startMs: Math.round(performance.now() - t0), snapshotBytes: snapshot!.length });
await readLoop();
