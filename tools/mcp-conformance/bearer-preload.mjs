// `node --import ./bearer-preload.mjs ...`: adds `Authorization: Bearer $MCP_BEARER_TOKEN` to
// every HTTP request the process makes (global fetch and undici's request), for clients such
// as the MCP conformance suite that cannot send headers themselves. Existing Authorization
// headers are kept.
import { getGlobalDispatcher, setGlobalDispatcher } from 'undici';

const token = process.env.MCP_BEARER_TOKEN;
if (token) {
  const value = `Bearer ${token}`;
  const addAuth = (headers) => {
    if (headers == null) return { authorization: value };
    if (Array.isArray(headers)) {
      for (let i = 0; i < headers.length; i += 2) {
        if (String(headers[i]).toLowerCase() === 'authorization') return headers;
      }
      return [...headers, 'authorization', value];
    }
    if (typeof headers[Symbol.iterator] === 'function') {
      const out = {};
      for (const [k, v] of headers) out[k] = v;
      headers = out;
    }
    if (Object.keys(headers).some((k) => k.toLowerCase() === 'authorization')) return headers;
    return { ...headers, authorization: value };
  };
  setGlobalDispatcher(
    getGlobalDispatcher().compose((dispatch) => (opts, handler) =>
      dispatch({ ...opts, headers: addAuth(opts.headers) }, handler)),
  );
  const originalFetch = globalThis.fetch;
  globalThis.fetch = (input, init = {}) => {
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
    if (!headers.has('authorization')) headers.set('authorization', value);
    return originalFetch(input, { ...init, headers });
  };
}
