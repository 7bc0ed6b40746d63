// The supervisor: main thread of one sandbox Deno process. Runs no untrusted code.
//
// One process holds at most ONE interpreter at a time: a Web Worker (its own V8 isolate)
// restored from a private copy of the Pyodide memory snapshot. The process is the unit of
// isolation and of accounting: the host caps its memory with RLIMIT_DATA around each run, and
// a run that crashes or exhausts memory takes down this process only — no other run lives here.
//
// It talks to the host over a Unix socket (the only thing this process may open besides
// Pyodide's assets and the snapshot file), relays host calls, checks every message the worker
// sends against runtimes/PROTOCOL.md (type, fields, sizes, rates), and terminates the worker on
// timeout, cancel or any protocol violation. stdin is /dev/null and stdout is never read by the
// host as protocol: sandboxed code can reach both.
//
// Frames to and from the host: 4-byte big-endian length + UTF-8 JSON (runtimes/PROTOCOL.md).

// deno-lint-ignore no-explicit-any
type Any = any;

const cfg = JSON.parse(Deno.args[0]);
const MODE: string = cfg.mode === "snapshot" ? "snapshot" : "serve";
const ASSETS = new URL("./node_modules/pyodide/", import.meta.url).pathname;
const WORKER_URL = new URL("./worker.ts", import.meta.url);
const INIT_TIMEOUT_MS = Number(cfg.initTimeoutMs) || 60_000;
// Limits of the host channel and of what a worker may send (mirrored in
// gateway/sandbox/protocol.py; the host enforces them again).
const MAX_HOST_FRAME = Number(cfg.maxHostFrame) || 16 * 1024 * 1024; // host → here
const MAX_OUT_FRAME = Number(cfg.maxOutFrame) || 8 * 1024 * 1024; // here → host
const MAX_OP = 256; // operation name of a host call
const MAX_ARGS = Number(cfg.maxCallArgs) || 1024 * 1024; // JSON arguments of one host call
const MAX_RUN_ARGS = Number(cfg.maxRunArgs) || 8 * 1024 * 1024; // all host-call arguments of a run
const MAX_INFLIGHT = 8; // host calls awaiting an answer at once (honest code has one)
const MAX_REPLY_OVERHEAD = 64 * 1024; // error text etc. on top of maxResult

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

// ---- snapshot mode: cold-load Pyodide once, write the memory snapshot, exit --------------------

if (MODE === "snapshot") {
  const runner = await Deno.readTextFile(new URL("./sandbox_runner.py", import.meta.url));
  const w = newWorker();
  const snap = await new Promise<Uint8Array>((resolve, reject) => {
    w.onmessage = (e) =>
      e.data?.t === "snapshot" ? resolve(e.data.snap) : reject(new Error(String(e.data?.message)));
    w.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    w.postMessage({ t: "init", mode: "snapshot", runner });
  });
  w.terminate();
  await Deno.writeFile(String(cfg.out), snap);
  Deno.exit(0);
}

// ---- serve mode ----------------------------------------------------------------------------------

const enc = new TextEncoder();
const dec = new TextDecoder();
const conn = await Deno.connect({ transport: "unix", path: String(cfg.socket) });

let writing: Promise<void> = Promise.resolve();
function send(msg: Any) {
  const body = enc.encode(JSON.stringify(msg));
  if (body.length > MAX_OUT_FRAME) {
    // Never put a frame on the wire that the host would have to refuse: end the run instead.
    if (msg.id !== undefined && current && current.id === String(msg.id)) {
      violation(current, `a ${String(msg.t)} frame of ${body.length} bytes exceeds the channel limit`);
    }
    return;
  }
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  writing = writing.then(async () => {
    let off = 0;
    while (off < frame.length) off += await conn.write(frame.subarray(off));
  }).catch(() => Deno.exit(3));
}

// The private snapshot and the compiled module. The snapshot bytes never leave this thread:
// each worker is sent its own fresh copy (transferred), so no two interpreters can ever see
// the same writable memory. The compiled WebAssembly.Module is immutable code.
const snapshot: Uint8Array = await Deno.readFile(String(cfg.snapshot));
const wasmModule = await WebAssembly.compile(await Deno.readFile(ASSETS + "pyodide.asm.wasm"));

type Run = {
  id: string;
  timer: ReturnType<typeof setTimeout> | undefined;
  budget: number;
  used: number;
  maxReply: number;
  maxCalls: number;
  calls: number;
  argChars: number;
  inflight: Set<number>;
  t0: number;
};

let worker: Worker | null = null;
let workerReady = false;
let session = false; // a session process keeps its worker between runs
let current: Run | null = null;
// The SDK text of the latest revision the host sent (the host's catalog data, trusted), kept so
// every new interpreter is restored with it installed and the host need not send it again; and
// the revision the current worker holds (null: none).
let sdkText: string | null = null;
let sdkRev = "";
let workerRev: string | null = null;

function killWorker() {
  if (worker) worker.terminate();
  worker = null;
  workerReady = false;
  workerRev = null;
}

function finish(run: Run, msg: Any) {
  if (current !== run) return;
  current = null;
  clearTimeout(run.timer);
  send({ t: "done", id: run.id, ...msg });
}

function violation(run: Run, why: string) {
  // The worker broke the protocol: it is hostile or broken. It never runs again.
  killWorker();
  finish(run, { status: "violation", reason: why.slice(0, 500), dropped: session });
}

function isStr(v: unknown, max: number): v is string {
  return typeof v === "string" && v.length <= max;
}

function onWorkerMessage(m: Any) {
  const run = current;
  if (!run) {
    // Nothing is expected from an idle worker: whatever speaks now is misbehaving.
    killWorker();
    return;
  }
  if (!m || typeof m !== "object" || typeof m.t !== "string") {
    return violation(run, "a message that is not a frame");
  }
  if (m.t === "out") {
    if (!isStr(m.line, Math.max(1, run.budget)) || (m.stream !== "stdout" && m.stream !== "stderr") ||
        (m.more !== undefined && typeof m.more !== "boolean")) {
      return violation(run, "a malformed output frame");
    }
    if (run.used >= run.budget) return; // over budget: dropped here, counted on the host
    const line = m.line.slice(0, run.budget - run.used);
    // A piece of a longer line (`more`: the rest follows) ends no line: no newline to count.
    const more = m.more === true && line.length === m.line.length;
    run.used += line.length + (more ? 0 : 1);
    send(more ? { t: "event", id: run.id, stream: m.stream, line, more: true }
              : { t: "event", id: run.id, stream: m.stream, line });
  } else if (m.t === "call") {
    if (!Number.isSafeInteger(m.call) || m.call < 1 || !isStr(m.op, MAX_OP) || !isStr(m.args, MAX_ARGS)) {
      return violation(run, "a malformed or oversized host call");
    }
    if (run.inflight.has(m.call)) return violation(run, "a repeated host call id");
    if (run.inflight.size >= MAX_INFLIGHT) return violation(run, "too many host calls in flight");
    // One past the budget is answered by the host with resource_exhausted; a flood is not.
    if (++run.calls > run.maxCalls + 1) return violation(run, "host calls past the budget");
    if ((run.argChars += m.args.length) > MAX_RUN_ARGS) return violation(run, "host-call arguments past the limit");
    run.inflight.add(m.call);
    send({ t: "host_call", id: run.id, call: m.call, op: m.op, args: m.args });
  } else if (m.t === "done") {
    if (!isStr(m.reply, run.maxReply)) return violation(run, "an oversized or malformed result");
    if (!session || m.fatal) killWorker();
    finish(run, {
      status: m.fatal ? "fatal" : "ok",
      reply: m.reply,
      truncated: Boolean(m.truncated) || run.used >= run.budget,
      dropped: session && Boolean(m.fatal),
      ms: Number(m.ms) || 0,
      sup: performance.now() - run.t0,
    });
  } else {
    violation(run, "an unknown frame type");
  }
}

function onWorkerFailure(why: string) {
  killWorker();
  if (current) finish(current, { status: "crashed", reason: why, dropped: session });
}

function startWorker(): Promise<void> {
  const t0 = performance.now();
  return new Promise<void>((resolve) => {
    const w = newWorker();
    worker = w;
    const installed = sdkText === null ? null : sdkRev; // what init installs, below
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(t);
      if (worker === w) killWorker();
      send({ t: "init_failed", reason: why.slice(0, 2000) });
      resolve();
    };
    const t = setTimeout(() => fail("worker start timed out"), INIT_TIMEOUT_MS);
    w.onmessage = (e) => {
      if (worker !== w) return;
      const m = e.data;
      if (!settled && m && m.t === "ready") {
        settled = true;
        clearTimeout(t);
        workerReady = true;
        workerRev = installed;
        w.onmessage = (e2) => {
          if (worker === w) onWorkerMessage(e2.data);
        };
        send({ t: "ready", startMs: Math.round(performance.now() - t0) });
        resolve();
      } else if (!settled) {
        fail(`worker failed to start: ${String(m?.message)}`);
      }
    };
    w.onerror = (e) => {
      e.preventDefault();
      if (worker !== w) return;
      if (!settled) return fail(`worker failed to start: ${String(e.message)}`);
      onWorkerFailure(`uncaught error in the sandbox: ${String(e.message).slice(0, 500)}`);
    };
    w.onmessageerror = () => {
      if (worker !== w) return;
      if (!settled) return fail("unreadable message from a starting worker");
      if (current) violation(current, "an unreadable message");
      else killWorker();
    };
    const copy = snapshot.slice(); // private to this worker, transferred, never kept here
    w.postMessage(
      { t: "init", mode: "restore", snap: copy, mod: wasmModule, sdk: sdkText, rev: sdkRev },
      [copy.buffer],
    );
  });
}

// ---- host messages ---------------------------------------------------------------------------

function startRun(m: Any) {
  const id = String(m.id);
  const rev = String(m.rev ?? "");
  if (typeof m.sdk === "string") {
    sdkText = m.sdk;
    sdkRev = rev;
  }
  if (current || !worker || !workerReady) {
    send({ t: "done", id, status: "crashed", reason: "no idle interpreter in this process", dropped: session });
    return;
  }
  // What the worker needs of the SDK: nothing if it holds this revision, else its text (sent
  // with this frame or kept from an earlier one). The host sends null only for a revision it
  // sent this process before.
  let sdk: string | null = null;
  if (rev === "" || workerRev !== rev) {
    sdk = typeof m.sdk === "string" ? m.sdk : (sdkText !== null && sdkRev === rev ? sdkText : null);
    if (sdk === null) {
      send({ t: "done", id, status: "crashed", reason: "no SDK text for this revision", dropped: Boolean(m.session) });
      return;
    }
    workerRev = rev; // the runner installs it before the code runs
  }
  session = Boolean(m.session);
  const maxResult = Number(m.maxResult) || 1048576;
  const run: Run = {
    id, timer: undefined, budget: Math.max(0, Number(m.maxOut) || 0), used: 0,
    maxReply: maxResult + MAX_REPLY_OVERHEAD, maxCalls: Math.max(0, Number(m.maxCalls) || 0),
    calls: 0, argChars: 0, inflight: new Set(), t0: performance.now(),
  };
  current = run;
  run.timer = setTimeout(() => {
    killWorker();
    finish(run, { status: "timeout", dropped: session });
  }, Math.max(1, Number(m.timeoutMs) || 1));
  worker.postMessage({
    t: "run", source: String(m.source), inputs: String(m.inputs),
    sdk, rev,
    session, maxOut: run.budget, maxResult,
  });
}

function onHost(m: Any) {
  if (!m || typeof m !== "object") return;
  if (m.t === "run") {
    startRun(m);
  } else if (m.t === "host_result") {
    const run = current;
    if (!run || run.id !== String(m.id) || !run.inflight.delete(Number(m.call))) return;
    worker?.postMessage({ t: "reply", call: Number(m.call), reply: String(m.reply) });
  } else if (m.t === "cancel") {
    const run = current;
    if (!run || run.id !== String(m.id)) return;
    killWorker();
    finish(run, { status: "cancelled", dropped: session });
  } else if (m.t === "recycle") {
    // The host has restored this process's memory allowance: start a fresh interpreter.
    if (current) return;
    killWorker();
    session = false;
    startWorker();
  } else if (m.t === "stats") {
    send({ t: "stats", id: String(m.id), worker: worker !== null, ready: workerReady, busy: current !== null });
  }
}

async function readLoop() {
  // One buffer that doubles as needed (a frame of several MiB arrives in 64 KiB reads: copying
  // everything received so far on every read was quadratic in the frame's size).
  const CHUNK = 65536;
  let buf = new Uint8Array(CHUNK);
  let used = 0;
  const chunk = new Uint8Array(CHUNK);
  while (true) {
    const n = await conn.read(chunk);
    if (n === null) break;
    if (used + n > buf.length) {
      const next = new Uint8Array(Math.max(buf.length * 2, used + n));
      next.set(buf.subarray(0, used));
      buf = next;
    }
    buf.set(chunk.subarray(0, n), used);
    used += n;
    let off = 0;
    while (used - off >= 4) {
      const len = new DataView(buf.buffer, off).getUint32(0);
      if (len > MAX_HOST_FRAME) Deno.exit(4); // the host never sends these
      if (used - off < 4 + len) break;
      const msg = JSON.parse(dec.decode(buf.subarray(off + 4, off + 4 + len)));
      off += 4 + len;
      onHost(msg);
    }
    if (off > 0) {
      buf.copyWithin(0, off, used);
      used -= off;
    }
    if (used === 0 && buf.length > 16 * CHUNK) buf = new Uint8Array(CHUNK); // give a big one back
  }
  Deno.exit(0); // the host went away: nothing may outlive it
}

send({ t: "hello", pid: Deno.pid, snapshotBytes: snapshot.length });
startWorker();
await readLoop();
