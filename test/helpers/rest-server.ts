// A small REST backend for restic (the protocol of restic's rest-server,
// https://restic.readthedocs.io/en/stable/100_references.html#rest-backend),
// with HTTP basic auth, on loopback: what a `rest:http://user:pass@host/`
// repository with credentials in its URL looks like to restic. Debian 12
// ships no rest-server; this is enough for `restic init`, backup, snapshots,
// restore, forget and prune. Files are kept in a dir, one per object.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const TYPES = new Set(['data', 'keys', 'locks', 'snapshots', 'index']);

export interface RestServer {
  url: (user: string, password: string) => string;
  /** Requests that were refused for want of the right credentials. */
  unauthorized: number;
  close(): Promise<void>;
}

export async function startRestServer(dir: string, user: string, password: string): Promise<RestServer> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const state = { unauthorized: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        if (req.headers.authorization !== expected) {
          state.unauthorized++;
          res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="restic"' }).end();
          return;
        }
        handle(dir, req, res, Buffer.concat(chunks));
      } catch (err) {
        res.writeHead(500).end(String(err));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: (u, p) => `rest:http://${u}:${p}@127.0.0.1:${port}/`,
    get unauthorized() {
      return state.unauthorized;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function handle(dir: string, req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const url = new URL(req.url ?? '/', 'http://x');
  const parts = url.pathname.split('/').filter((p) => p !== '');
  const method = req.method ?? 'GET';
  if (parts.length === 0) {
    // POST /?create=true: a new repository.
    if (method === 'POST' && url.searchParams.get('create') === 'true') {
      for (const t of TYPES) mkdirSync(path.join(dir, t), { recursive: true });
      res.writeHead(200).end();
      return;
    }
    res.writeHead(400).end();
    return;
  }
  if (parts[0] === 'config' && parts.length === 1) {
    object(path.join(dir, 'config'), method, req, res, body);
    return;
  }
  const [type, name] = parts;
  if (type === undefined || !TYPES.has(type) || parts.length > 2) {
    res.writeHead(404).end();
    return;
  }
  if (name === undefined) {
    if (method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    const d = path.join(dir, type);
    const names = existsSync(d) ? readdirSync(d) : [];
    const v2 = (req.headers.accept ?? '').includes('application/vnd.x.restic.rest.v2');
    const list = v2 ? names.map((n) => ({ name: n, size: statSync(path.join(d, n)).size })) : names;
    res.writeHead(200, { 'Content-Type': v2 ? 'application/vnd.x.restic.rest.v2' : 'application/vnd.x.restic.rest.v1' }).end(JSON.stringify(list));
    return;
  }
  if (!/^[0-9a-zA-Z._-]+$/.test(name)) {
    res.writeHead(400).end();
    return;
  }
  mkdirSync(path.join(dir, type), { recursive: true });
  object(path.join(dir, type, name), method, req, res, body);
}

function object(file: string, method: string, req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  if (method === 'POST') {
    if (existsSync(file)) {
      res.writeHead(403).end();
      return;
    }
    writeFileSync(file, body, { mode: 0o600 });
    res.writeHead(200).end();
    return;
  }
  if (method === 'DELETE') {
    rmSync(file, { force: true });
    res.writeHead(200).end();
    return;
  }
  if (!existsSync(file)) {
    res.writeHead(404).end();
    return;
  }
  const size = statSync(file).size;
  if (method === 'HEAD') {
    res.writeHead(200, { 'Content-Length': size }).end();
    return;
  }
  if (method !== 'GET') {
    res.writeHead(405).end();
    return;
  }
  const data = readFileSync(file);
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  if (range !== null) {
    const start = Number(range[1]);
    const end = range[2] === '' ? size - 1 : Math.min(Number(range[2]), size - 1);
    res.writeHead(206, { 'Content-Length': end - start + 1, 'Content-Range': `bytes ${start}-${end}/${size}` }).end(data.subarray(start, end + 1));
    return;
  }
  res.writeHead(200, { 'Content-Length': size }).end(data);
}
