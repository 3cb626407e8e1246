// The systemd units as systemd reads them (`systemd-analyze verify`), with
// ExecStart pointed at this checkout, and the properties the README promises.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const unitsDir = path.join(root, 'systemd');
const analyze = '/usr/bin/systemd-analyze';

describe('systemd units', () => {
  it('verify cleanly', { skip: !existsSync(analyze) && 'no systemd-analyze' }, () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-units-'));
    try {
      const units = readdirSync(unitsDir).filter((f) => /\.(service|timer)$/.test(f));
      for (const u of units) {
        copyFileSync(path.join(unitsDir, u), path.join(dir, u));
        const text = readFileSync(path.join(dir, u), 'utf8').replaceAll('/usr/sbin/virtsnap', path.join(root, 'bin/virtsnap'));
        writeFileSync(path.join(dir, u), text);
      }
      const out = spawnSync(analyze, ['verify', '--man=no', ...units.map((u) => `./${u}`)], { cwd: dir, encoding: 'utf8' });
      // Only what it says of ours: the host's own units (libvirtd, zfs-mount, sanoid) may draw warnings of their own.
      const ours = out.stderr.split('\n').filter((l) => units.some((u) => l.includes(u)) || l.includes('sanoid.service.d'));
      assert.equal(out.status, 0, out.stderr);
      assert.deepEqual(ours, [], out.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('recover runs once per boot, after either libvirt daemon, without pulling one in', () => {
    const unit = readFileSync(path.join(unitsDir, 'virtsnap-recover.service'), 'utf8');
    assert.match(unit, /^RemainAfterExit=yes$/m);
    assert.match(unit, /^After=.*\blibvirtd\.service\b.*\bvirtqemud\.service\b/m);
    assert.doesNotMatch(unit, /^(Wants|Requires)=.*libvirtd/m);
    assert.match(unit, /^UMask=0077$/m);
    const dropIn = readFileSync(path.join(unitsDir, 'sanoid.service.d/virtsnap.conf'), 'utf8');
    assert.match(dropIn, /^After=.*virtsnap-recover\.service/m);
    assert.doesNotMatch(dropIn, /^(Wants|Requires)=.*libvirtd/m);
  });

  it("each unit points at the man page and runs the Debian package's /usr/sbin/virtsnap", () => {
    for (const u of readdirSync(unitsDir).filter((f) => /\.(service|timer)$/.test(f))) {
      const unit = readFileSync(path.join(unitsDir, u), 'utf8');
      assert.match(unit, /^Documentation=man:virtsnap\(8\)$/m, u);
      for (const exec of unit.match(/^ExecStart=.*$/gm) ?? []) assert.match(exec, /^ExecStart=\/usr\/sbin\/virtsnap /, u);
    }
  });
});
