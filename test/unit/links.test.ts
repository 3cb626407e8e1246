// The documents point at things that exist: every relative link and every
// #anchor in README.md and doc/*.md resolves (the file is there; the anchor
// is a heading's slug as GitHub makes it), and every file the man page
// names (under /usr/share/doc/virtsnap/, or as README or doc/...) is in the
// repository or made by the Debian package's build (packaging/deb/build).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../helpers/virtsnap.js';

const manPage = path.join(repoRoot, 'doc/virtsnap.8');
const debBuild = path.join(repoRoot, 'packaging/deb/build');

/** README.md and every doc/*.md, relative to the repository. */
function documents(): string[] {
  const doc = readdirSync(path.join(repoRoot, 'doc')).filter((f) => f.endsWith('.md')).sort();
  return ['README.md', ...doc.map((f) => `doc/${f}`)];
}

/** The lines of a Markdown text outside fenced code blocks (``` or ~~~); a fenced line is kept as ''. */
function outsideFences(text: string): string[] {
  let fence: string | null = null;
  return text.split('\n').map((line) => {
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(line);
    if (fence === null && m !== null) {
      fence = m[1]!;
      return '';
    }
    if (fence !== null) {
      if (new RegExp(`^ {0,3}${fence[0] === '`' ? '`' : '~'}{${fence.length},}\\s*$`).test(line)) fence = null;
      return '';
    }
    return line;
  });
}

/** The slug GitHub gives a heading: its text lowercased, punctuation but '-' and '_' dropped, each space a '-'. */
function slugOf(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .replace(/`/g, '')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '')
    .replace(/ /g, '-');
}

/** Every anchor a Markdown text's headings make (ATX and setext), a repeated slug numbered as GitHub does. */
function anchorsOf(text: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  const add = (heading: string) => {
    const slug = slugOf(heading);
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    anchors.add(n === 0 ? slug : `${slug}-${n}`);
  };
  const lines = outsideFences(text);
  for (const [i, line] of lines.entries()) {
    const atx = /^ {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$/.exec(line);
    if (atx !== null) {
      add(atx[1] ?? '');
      continue;
    }
    const above = lines[i - 1] ?? '';
    if (/^ {0,3}(=+|-+)\s*$/.test(line) && above.trim() !== '' && !/^\s*[|#>*+-]/.test(above) && !/^\s*\d+\./.test(above)) add(above);
  }
  return anchors;
}

interface Link {
  file: string;
  target: string;
}

/** Every link target of a Markdown text (inline links, images, reference definitions), outside code. */
function linksOf(text: string, file: string): Link[] {
  const prose = outsideFences(text)
    .join('\n')
    // Code spans: what is inside is no link.
    .replace(/(`+)[\s\S]*?\1/g, (span) => ' '.repeat(span.length));
  const links: Link[] = [];
  for (const m of prose.matchAll(/!?\[((?:[^[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+"[^"]*")?\s*\)/g)) {
    links.push({ file, target: m[2]!.replace(/^<|>$/g, '') });
  }
  for (const m of prose.matchAll(/^ {0,3}\[[^\]]+\]:\s*(\S+)/gm)) links.push({ file, target: m[1]! });
  return links;
}

/** What is wrong with one link, or null. External links (a scheme such as https: or mailto:) are not followed. */
function linkProblem(link: Link, root: string, anchorsOfFile: (file: string) => Set<string>): string | null {
  const { file, target } = link;
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return null;
  const hash = target.indexOf('#');
  const filePart = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
  const anchor = hash < 0 ? null : decodeURIComponent(target.slice(hash + 1));
  if (filePart === '' && anchor === null) return `${file}: an empty link`;
  if (path.isAbsolute(filePart)) return `${file}: ${target} is absolute: link relative to the file`;
  const resolved = filePart === '' ? file : path.normalize(path.join(path.dirname(file), filePart));
  if (resolved.startsWith('..')) return `${file}: ${target} leaves the repository`;
  if (!existsSync(path.join(root, resolved))) return `${file}: ${target}: ${resolved} does not exist`;
  if (anchor === null) return null;
  if (!resolved.endsWith('.md') || statSync(path.join(root, resolved)).isDirectory()) return `${file}: ${target}: an anchor into ${resolved}, which is not a Markdown file`;
  if (!anchorsOfFile(resolved).has(anchor)) return `${file}: ${target}: ${resolved} has no heading with the anchor #${anchor}`;
  return null;
}

/** The man page's text with roff's escapes for '-', '\' and fonts undone. */
function manText(roff: string): string {
  return roff
    .replace(/\\f(?:\[[^\]]*\]|\(..|.)/g, '')
    .replace(/\\-/g, '-')
    .replace(/\\&/g, '')
    .replace(/\\e/g, '\\');
}

/** The files a man page names: under /usr/share/doc/virtsnap/ (relative to it), and README or doc/... (relative to the repository). */
function filesNamedBy(roff: string): { installed: string[]; repo: string[] } {
  const text = manText(roff);
  const installed = [...text.matchAll(/\/usr\/share\/doc\/virtsnap\/([\w.+/-]*[\w+/])/g)].map((m) => m[1]!.replace(/\/$/, ''));
  const repo = [
    ...[...text.matchAll(/(?<![\w/.-])README(\.md)?\b/g)].map(() => 'README.md'),
    ...[...text.matchAll(/(?<![\w/.-])doc\/[\w.+/-]*[\w+]/g)].map((m) => m[0]),
  ];
  return { installed: [...new Set(installed)], repo: [...new Set(repo)] };
}

/**
 * What packaging/deb/build puts under /usr/share/doc/virtsnap ("$doc"): each
 * path there, relative to it, with the repository file it comes from, or
 * null for one the build writes itself (changelog, copyright).
 */
function packagedDocs(script: string, root: string): Map<string, string | null> {
  const files = new Map<string, string | null>();
  const dirs = new Set<string>(['']);
  const expand = (source: string): string[] => {
    if (!source.includes('*')) return [source];
    const dir = path.dirname(source);
    const pattern = new RegExp(`^${path.basename(source).replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}$`);
    const full = path.join(root, dir);
    return existsSync(full) ? readdirSync(full).filter((f) => pattern.test(f)).sort().map((f) => path.join(dir, f)) : [];
  };
  // One command a line: continuations joined, a one-line `for V in WORDS; do ...; done` unrolled over its words.
  const lines = script
    .replace(/\\\n/g, ' ')
    .split('\n')
    .flatMap((line) => {
      const loop = /^\s*for (\w+) in ([^;]+); do (.*?);? done\s*$/.exec(line);
      if (loop === null) return [line];
      const [, name, words, body] = loop as unknown as [string, string, string, string];
      return words
        .trim()
        .split(/\s+/)
        .flatMap(expand)
        .flatMap((value) =>
          body
            .replace(new RegExp(`\\$\\(basename "?\\$${name}"?\\)`, 'g'), path.basename(value))
            .replace(new RegExp(`"?\\$\\{?${name}\\}?"?`, 'g'), value)
            .split(';'),
        );
    });
  for (const line of lines) {
    const docPath = /"\$doc\/?([^"]*)"/.exec(line);
    if (docPath === null) continue;
    const dest = docPath[1]!.replace(/\/$/, '');
    if (/^\s*(install|mkdir)\b.*\s-d\b/.test(line) || /^\s*mkdir\b/.test(line)) {
      for (const m of line.matchAll(/"\$doc\/?([^"]*)"/g)) dirs.add(m[1]!.replace(/\/$/, ''));
      continue;
    }
    const redirected = /<\s*"?([^\s"<>|]+)"?\s*>\s*"\$doc\//.exec(line);
    if (redirected !== null) {
      files.set(dest, redirected[1]!);
      continue;
    }
    const copy = /^\s*(?:install|cp)\b(.*?)"\$doc\/?[^"]*"\s*$/.exec(line);
    if (copy !== null) {
      const words = copy[1]!.trim().split(/\s+/).filter(Boolean);
      const sources: string[] = [];
      for (let i = 0; i < words.length; i++) {
        if (words[i] === '-m' || words[i] === '--mode' || words[i] === '-o' || words[i] === '-g') i++;
        else if (!words[i]!.startsWith('-')) sources.push(...expand(words[i]!.replace(/^"|"$/g, '')));
      }
      const intoDir = docPath[1]!.endsWith('/') || dirs.has(dest) || sources.length > 1;
      for (const s of sources) files.set(intoDir ? path.join(dest, path.basename(s)) : dest, s);
      continue;
    }
    if (/>\s*"\$doc\//.test(line)) files.set(dest, null);
  }
  return files;
}

describe('links in README.md and doc/*.md', () => {
  it('slugs are made as GitHub makes them', () => {
    assert.equal(slugOf('sanoid.conf'), 'sanoidconf');
    assert.equal(slugOf('Off-site: replication and restore on another host'), 'off-site-replication-and-restore-on-another-host');
    assert.equal(slugOf('RAM inside the snapshot (`VIRTSNAP_STORE=dataset`)'), 'ram-inside-the-snapshot-virtsnap_storedataset');
    assert.equal(slugOf("How `ram` mode keeps the guest's pause short"), 'how-ram-mode-keeps-the-guests-pause-short');
    assert.deepEqual([...anchorsOf('# A\n\n## A\n\n```\n# not a heading\n```\nSetext\n---\n')], ['a', 'a-1', 'setext']);
  });

  it('finds links outside code only', () => {
    const text = 'See [a](x.md#b) and `[c](nope.md)`.\n\n```\n[d](nope.md)\n```\n[e]: y.md\n![f](img.png "t")\n';
    assert.deepEqual(linksOf(text, 'F.md').map((l) => l.target), ['x.md#b', 'img.png', 'y.md']);
  });

  it('every relative link names a file that exists, and every #anchor a heading there', () => {
    const cache = new Map<string, Set<string>>();
    const anchors = (file: string) => {
      if (!cache.has(file)) cache.set(file, anchorsOf(readFileSync(path.join(repoRoot, file), 'utf8')));
      return cache.get(file)!;
    };
    const docs = documents();
    assert.ok(docs.length > 1, 'README.md and doc/*.md');
    let checked = 0;
    const problems: string[] = [];
    for (const file of docs) {
      for (const link of linksOf(readFileSync(path.join(repoRoot, file), 'utf8'), file)) {
        checked++;
        const problem = linkProblem(link, repoRoot, anchors);
        if (problem !== null) problems.push(problem);
      }
    }
    assert.ok(checked > 0, 'links are found');
    assert.deepEqual(problems, []);
  });

  it('a link to a missing file or heading is caught', () => {
    const anchors = () => new Set(['there']);
    assert.equal(linkProblem({ file: 'README.md', target: 'doc/operations.md' }, repoRoot, anchors), null);
    assert.match(linkProblem({ file: 'README.md', target: 'doc/nothing-here.md' }, repoRoot, anchors)!, /does not exist/);
    assert.match(linkProblem({ file: 'README.md', target: '#not-there' }, repoRoot, anchors)!, /no heading with the anchor #not-there/);
    assert.equal(linkProblem({ file: 'README.md', target: 'https://example.org/x#y' }, repoRoot, anchors), null);
  });
});

describe('files the man page names', () => {
  it('reads /usr/share/doc/virtsnap paths, README and doc/... out of roff', () => {
    const roff = '.PP\n/usr/share/doc/virtsnap/README.md.gz\nsee \\fBdoc/operations.md\\fR and README.\n/usr/share/doc/virtsnap/examples/sanoid.conf.\n';
    assert.deepEqual(filesNamedBy(roff), { installed: ['README.md.gz', 'examples/sanoid.conf'], repo: ['README.md', 'doc/operations.md'] });
  });

  it('reads what packaging/deb/build installs under /usr/share/doc/virtsnap', () => {
    const docs = packagedDocs(readFileSync(debBuild, 'utf8'), repoRoot);
    assert.equal(docs.get('README.md.gz'), 'README.md');
    assert.equal(docs.get('examples/sanoid.conf'), 'examples/sanoid.conf');
    assert.ok(docs.has('copyright'), 'the copyright file');
    const loop = 'doc=$root/usr/share/doc/virtsnap\ninstall -d "$doc/examples"\nfor guide in doc/*.md; do gzip -9n <"$guide" >"$doc/$(basename "$guide").gz"; done\n';
    assert.equal(packagedDocs(loop, repoRoot).get('design.md.gz'), 'doc/design.md', 'a one-line for loop over a glob');
  });

  it('every one exists: in the repository, or made by the Debian package from a file that does', () => {
    const named = filesNamedBy(readFileSync(manPage, 'utf8'));
    assert.ok(named.installed.length > 0, 'the man page names files under /usr/share/doc/virtsnap');
    const docs = packagedDocs(readFileSync(debBuild, 'utf8'), repoRoot);
    for (const rel of named.installed) {
      assert.ok(docs.has(rel), `the man page names /usr/share/doc/virtsnap/${rel}, which packaging/deb/build does not install`);
      const source = docs.get(rel);
      if (source !== null && source !== undefined) assert.ok(existsSync(path.join(repoRoot, source)), `/usr/share/doc/virtsnap/${rel} is made from ${source}, which does not exist`);
    }
    for (const rel of named.repo) assert.ok(existsSync(path.join(repoRoot, rel)), `the man page names ${rel}, which does not exist`);
  });
});
