// The bare-restore floor (bench/code_speed.py --floor): what one fresh interpreter costs in Deno.
//
// Does what runtimes/supervisor.ts does for every isolated run and nothing else: compile
// pyodide.asm.wasm once, then N times: copy the snapshot, start a worker (runtimes/worker.ts,
// the sandbox's permissions) that restores Pyodide from it with the shared compiled module and
// warms up, wait for "ready", terminate it. No host, no socket, no runs. Prints one JSON line:
// CPU ms per restore of the whole process and per thread kind (from /proc/self/task), and the
// wall time of one restore.
//
//   deno run --allow-all ... bench/restore_floor.ts SNAPSHOT N   (workers keep the sandbox's permissions)

const RUNTIME = new URL("../runtimes/", import.meta.url);
const ASSETS = new URL("./node_modules/pyodide/", RUNTIME).pathname;
const SNAP = Deno.args[0];
const N = Number(Deno.args[1] || 30);
const WARMUP = 5; // the first restores tier up the shared module: not the steady state

function threads(): Record<string, number> {
  const o: Record<string, number> = {};
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const s = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const name = s.slice(s.indexOf("(") + 1, s.lastIndexOf(")")).replace(/-\d+$/, "");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      o[name] = (o[name] || 0) + (Number(f[11]) + Number(f[12])) * 10;
    } catch (_) {
      // the thread ended meanwhile
    }
  }
  return o;
}

function total(): number {
  const s = Deno.readTextFileSync("/proc/self/stat");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

const PERMISSIONS = {
  read: [ASSETS], write: false, net: false, env: false, run: false, ffi: false, sys: false,
  import: false,
};
const snapshot = await Deno.readFile(SNAP);
const mod = await WebAssembly.compile(await Deno.readFile(ASSETS + "pyodide.asm.wasm"));

async function restore(): Promise<number> {
  const t0 = performance.now();
  const w = new Worker(new URL("./worker.ts", RUNTIME), {
    type: "module",
    // deno-lint-ignore no-explicit-any
    deno: { permissions: PERMISSIONS } as any,
  } as WorkerOptions);
  await new Promise<void>((resolve, reject) => {
    w.onmessage = (e) => (e.data?.t === "ready" ? resolve() : reject(new Error(String(e.data?.message))));
    w.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    const copy = snapshot.slice();
    w.postMessage({ t: "init", mode: "restore", snap: copy, mod }, [copy.buffer]);
  });
  const ms = performance.now() - t0;
  w.terminate();
  return ms;
}

for (let i = 0; i < WARMUP; i++) await restore();
await new Promise((r) => setTimeout(r, 500));
const th0 = threads();
const c0 = total();
const walls: number[] = [];
for (let i = 0; i < N; i++) walls.push(await restore());
await new Promise((r) => setTimeout(r, 500)); // let the last worker's teardown be counted
const c1 = total();
const th1 = threads();
const perThread: Record<string, number> = {};
for (const k of Object.keys(th1)) {
  const v = Math.round((th1[k] - (th0[k] || 0)) / N);
  if (v) perThread[k] = v;
}
walls.sort((a, b) => a - b);
console.log(JSON.stringify({
  restores: N,
  cpu_ms_per_restore: (c1 - c0) / N,
  // Worker threads are new per restore and gone when read: their CPU is the remainder.
  cpu_ms_per_restore_live_threads: perThread,
  wall_ms_p50: walls[Math.floor(N / 2)],
}));
Deno.exit(0);
