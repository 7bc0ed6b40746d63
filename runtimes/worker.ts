// One sandbox interpreter: a Web Worker (its own V8 isolate) holding one Pyodide.
//
// Started by supervisor.ts with narrowed permissions (read: Pyodide's assets only; no net, env,
// write, run, ffi, sys, import). Everything in this isolate is reachable by sandboxed code
// (through pyodide_js), so nothing here is trusted: the supervisor attributes every message to
// the worker that sent it and the host re-checks every value. This file only has to be correct
// for honest runs. Its frames are declared in runtimes/PROTOCOL.md.
//
// The snapshot it restores from arrives as its own transferred copy: writing to it (sandboxed
// code can reach it as pyodide_js._api.config._loadSnapshot) changes nothing anyone else reads.

import { loadPyodide } from "./node_modules/pyodide/pyodide.mjs";

// deno-lint-ignore no-explicit-any
type Any = any;

const ASSETS = new URL("./node_modules/pyodide/", import.meta.url).pathname;
const scope = self as unknown as {
  postMessage(msg: Any, transfer?: Transferable[]): void;
  onmessage: ((e: MessageEvent) => void) | null;
};
const post = (msg: Any, transfer: Transferable[] = []) => scope.postMessage(msg, transfer);

let py: Any = null;
let runFn: Any = null;
let nextCall = 1;
const pendingCalls = new Map<number, (reply: string) => void>();

// Per-run output state: a byte budget shared by stdout and stderr, lines streamed as they end.
const out = {
  budget: 0,
  used: 0,
  truncated: false,
  partial: { stdout: "", stderr: "" } as Record<string, string>,
  decoders: {} as Record<string, TextDecoder>,
};

function resetOutput(budget: number) {
  out.budget = budget;
  out.used = 0;
  out.truncated = false;
  out.partial = { stdout: "", stderr: "" };
  out.decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
}

const encoder = new TextEncoder();

// One `out` message carries at most this many UTF-16 units of a line. Its frame to the host is
// then at most 6 bytes per unit (JSON escapes a control character as \u0001), 1.5 MiB whatever
// the run's maxOut, far below the channel's 8 MiB frame: output within budget is never a
// protocol violation however it escapes. A longer line goes as pieces, all but the last `more`.
const OUT_PIECE = 256 * 1024;

function postLine(stream: string, line: string, cut: boolean) {
  let at = 0;
  do {
    let end = Math.min(line.length, at + OUT_PIECE);
    const last = line.charCodeAt(end - 1);
    if (end < line.length && last >= 0xd800 && last <= 0xdbff) end--; // keep a pair whole
    const piece = line.slice(at, end);
    if (end < line.length) post({ t: "out", stream, line: piece, more: true });
    else if (cut) post({ t: "out", stream, line: piece, cut: true });
    else post({ t: "out", stream, line: piece });
    at = end;
  } while (at < line.length);
}

function emit(stream: string, line: string) {
  if (out.truncated) return;
  const room = out.budget - out.used;
  const bytes = encoder.encode(line).length;
  if (bytes + 1 > room) {
    out.truncated = true;
    // Keep what fits; the host trims to exact bytes again.
    if (room > 1) postLine(stream, line.slice(0, room - 1), true);
    out.used = out.budget;
    return;
  }
  out.used += bytes + 1;
  postLine(stream, line, false);
}

function writer(stream: string) {
  return {
    write(buf: Uint8Array): number {
      if (out.truncated) return buf.length;
      let text = out.partial[stream] + out.decoders[stream].decode(buf, { stream: true });
      let nl: number;
      while ((nl = text.indexOf("\n")) >= 0 && !out.truncated) {
        emit(stream, text.slice(0, nl));
        text = text.slice(nl + 1);
      }
      // A line longer than the whole budget cannot fit: cut it now instead of buffering it.
      if (text.length > out.budget) {
        emit(stream, text);
        text = "";
      }
      out.partial[stream] = out.truncated ? "" : text;
      return buf.length;
    },
  };
}

function flushOutput() {
  for (const stream of ["stdout", "stderr"]) {
    if (out.partial[stream]) emit(stream, out.partial[stream]);
    out.partial[stream] = "";
  }
}

// Host calls: Python blocks on the returned promise via run_sync (JSPI).
function hostCall(operation: string, argsJson: string): Promise<string> {
  const call = nextCall++;
  return new Promise((resolve) => {
    pendingCalls.set(call, resolve);
    post({ t: "call", call, op: String(operation), args: String(argsJson) });
  });
}

function shareCompiledModule(mod: WebAssembly.Module | undefined) {
  // Reuse the supervisor's compiled pyodide.asm.wasm instead of compiling it again per isolate.
  if (!mod) return;
  const orig = WebAssembly.instantiate;
  // deno-lint-ignore no-explicit-any
  (WebAssembly as any).instantiate = function (src: Any, imports: Any) {
    if (src && typeof src.byteLength === "number" && src.byteLength > 4_000_000) {
      return orig.call(WebAssembly, mod, imports).then((instance: Any) => ({ instance, module: mod }));
    }
    // deno-lint-ignore prefer-rest-params
    return (orig as Any).apply(WebAssembly, arguments);
  };
}

// Nothing a run can reach may persist beyond it or be shared with another context
// (docs/sandbox.md, "Isolation"): before any user code runs, the APIs that store data outside
// the isolate without a permission (the Cache API writes to $DENO_DIR), or that reach other
// contexts or host hardware, are replaced by non-configurable `undefined` (code cannot
// restore them), and Deno's internals (`Deno[Deno.internal].core`: raw ops) are removed.
// The DENO_DIR of a sandbox process also cannot exist (gateway/sandbox/process.py): this is
// the first line, that one the second.
const SEALED_GLOBALS = [
  "caches", "CacheStorage", "Cache", // persistent, on disk, no permission needed
  "BroadcastChannel", // every isolate of the process
  "indexedDB", "localStorage", "sessionStorage", "IDBFactory", "Storage", // not in a worker today
  "LockManager", "Lock", // navigator.locks: shared by the process's isolates
  "GPU", "GPUAdapter", "GPUDevice", // navigator.gpu: host hardware, outside RLIMIT_DATA
  "Worker", // a nested isolate would start with none of this sealed
];
const SEALED_NAVIGATOR = ["locks", "gpu", "storage", "serviceWorker"];

function seal(target: object, name: PropertyKey) {
  Object.defineProperty(target, name, {
    value: undefined, writable: false, enumerable: false, configurable: false,
  });
}

function sealGlobals() {
  for (const name of SEALED_GLOBALS) seal(globalThis, name);
  // On the instance and on its prototype (whose getters code could call on the instance).
  const proto = Object.getPrototypeOf(navigator);
  for (const name of SEALED_NAVIGATOR) {
    seal(navigator, name);
    if (proto && Object.getOwnPropertyDescriptor(proto, name)) seal(proto, name);
  }
  // deno-lint-ignore no-explicit-any
  const deno = Deno as any;
  const internal = deno.internal;
  if (!delete deno[internal] || deno[internal] !== undefined) {
    throw new Error("cannot remove Deno's internals from the sandbox");
  }
  seal(deno, internal);
}

async function init(msg: Any) {
  if (msg.mode === "snapshot") {
    const p: Any = await loadPyodide({
      indexURL: ASSETS,
      jsglobals: {},
      env: { HOME: "/home/pyodide" },
      _makeSnapshot: true,
      stdout: () => {},
      stderr: () => {},
    });
    p.globals.set("_src", String(msg.runner));
    p.runPython(
      "import sys, types\n" +
        "_m = types.ModuleType('_sandbox_runner')\n" +
        "sys.modules['_sandbox_runner'] = _m\n" +
        "exec(compile(_src, '_sandbox_runner.py', 'exec'), _m.__dict__)\n" +
        // The Python half of the warm-up (the first evaluation, json, a signature parse: ~40 ms
        // of first-time work) done once here, so it is in the snapshot instead of in every
        // restore. Our own code on constant data; it leaves no user state and no JS references.
        "_m.warm()\n" +
        "del _m, _src",
    );
    const snap: Uint8Array = p.makeMemorySnapshot();
    post({ t: "snapshot", snap }, [snap.buffer as ArrayBuffer]);
    return;
  }
  shareCompiledModule(msg.mod);
  py = await loadPyodide({
    indexURL: ASSETS,
    jsglobals: {},
    env: { HOME: "/home/pyodide" },
    _loadSnapshot: msg.snap,
    stdout: () => {},
    stderr: () => {},
  });
  py.setStdout(writer("stdout"));
  py.setStderr(writer("stderr"));
  py.setStdin({ error: true });
  const runner = py.pyimport("_sandbox_runner");
  runFn = runner.run;
  await runner.warm.callPromising(Promise.resolve("{}"));
  // The SDK of the process's last run, installed before this interpreter is offered: a run of
  // the same revision finds it ready (the host's catalog data; no run has touched this isolate).
  if (typeof msg.sdk === "string") runner.use_sdk(msg.sdk, String(msg.rev));
  sealGlobals(); // last: nothing of ours needs these after the warm-up
  post({ t: "ready" });
}

async function run(msg: Any) {
  const T0 = performance.now();
  resetOutput(Number(msg.maxOut) || 0);
  let reply: string;
  let fatal = false;
  try {
    reply = await runFn.callPromising(
      String(msg.source),
      String(msg.inputs),
      msg.sdk === null ? null : String(msg.sdk),
      String(msg.rev),
      hostCall,
      Boolean(msg.session),
      Number(msg.maxResult),
    );
  } catch (e) {
    // The interpreter itself failed (os._exit, a fatal wasm trap): it cannot be reused.
    fatal = true;
    reply = JSON.stringify({
      ok: false,
      result: null,
      error: { type: "InterpreterFatal", message: String(e).slice(0, 2000), traceback: "" },
    });
  }
  flushOutput();
  post({ t: "done", reply, truncated: out.truncated, fatal, ms: performance.now() - T0 });
}

scope.onmessage = (e: MessageEvent) => {
  const msg = e.data;
  if (!msg || typeof msg !== "object") return;
  if (msg.t === "reply") {
    const resolve = pendingCalls.get(msg.call);
    pendingCalls.delete(msg.call);
    if (resolve) resolve(String(msg.reply));
  } else if (msg.t === "init") {
    init(msg).catch((err) => post({ t: "initError", message: String(err?.stack ?? err) }));
  } else if (msg.t === "run") {
    run(msg);
  }
};
