// The host Worker for bench/peers.py's @cloudflare/codemode runner (workerd, --experimental for
// the Worker Loader binding). Each execution is codemode's own DynamicWorkerExecutor: a fresh
// dynamic Worker loaded through env.LOADER per run, the code evaluated in it, the Worker
// disposed. GET /?code=...&n=N runs the code N times back to back and answers the last result.
import { DynamicWorkerExecutor } from "codemode/index.js";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const code = url.searchParams.get("code") ?? "async () => 1 + 1";
    const n = Number(url.searchParams.get("n") ?? "1");
    const executor = new DynamicWorkerExecutor({ loader: env.LOADER });
    let out = { result: undefined };
    for (let i = 0; i < n; i++) {
      out = await executor.execute(code, [{ name: "codemode", fns: {} }]);
    }
    return Response.json({ result: out.result ?? null, error: out.error ?? null });
  },
};
