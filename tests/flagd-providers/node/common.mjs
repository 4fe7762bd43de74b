// What the Node provider scripts share: their environment, HTTP calls to the cluster, and the
// stock provider connected in-process to the sync listeners named by ADDRESSES (a gRPC `ipv4:`
// list of the nodes' sync addresses, over TLS with CA).
import { FlagdProvider } from '@openfeature/flagd-provider';

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A JSON call with a bearer token; throws on an error status.
export const request = async (url, method, token, body) => {
  const r = await fetch(url, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  if (!r.ok) throw new Error(`${method} ${url}: ${r.status} ${await r.text()}`);
  return r.json();
};
// An admin API call to ADMIN_URL with TOKEN.
export const admin = (method, path, body) => request(env('ADMIN_URL') + path, method, env('TOKEN'), body);
// The stock provider, in-process, for namespace `ns` (host:port is the channel's target: every
// node's address, the port of the last one separately).
export const inProcessProvider = (ns, extra = {}) => {
  const addresses = env('ADDRESSES');
  const cut = addresses.lastIndexOf(':');
  return new FlagdProvider({
    resolverType: 'in-process',
    host: addresses.slice(0, cut),
    port: Number(addresses.slice(cut + 1)),
    tls: true,
    certPath: env('CA'),
    defaultAuthority: 'localhost',
    selector: `flagSetId=${ns}`,
    ...extra,
  });
};
