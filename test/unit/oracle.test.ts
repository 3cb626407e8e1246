// The rules every restore in the tests is judged by (test/helpers/oracle.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_WATCH, enoughProgress, oracleProblems, progressOf, stalled } from '../helpers/oracle.js';

const healthy = `TICK 120
VSBED MEM sweep=400 lost=0
TICK 130
TICK 140
VSBED MEM sweep=460 lost=0
`;

describe('the oracles on a restored guest\'s console', () => {
  it('a healthy restore: no problem, progress of both oracles counted', () => {
    assert.deepEqual(oracleProblems(healthy), []);
    assert.deepEqual(progressOf(healthy), { ticks: 3, sweeps: 2 });
    assert.equal(enoughProgress(progressOf(healthy), DEFAULT_WATCH), true);
    assert.equal(stalled(progressOf(healthy), DEFAULT_WATCH), null);
  });

  it('each oracle, the kernel and a reboot are problems, one line each, naming who said it', () => {
    const cases: [string, RegExp][] = [
      ['MISMATCH memory=41 disk=40 dev=vda block=1', /^disk oracle/],
      ['VSBED MEM LOST page=811 expected=5653424544000123 found=5653424544000122,5653424544000122,5653424544000122', /^memory oracle: a page lost a write/],
      ['[   31.002] list_del corruption. prev->next should be ffff888003a1c0e8, but was 0000000000000000', /^kernel/],
      ['[   31.003] kernel BUG at include/linux/fs.h:3148!', /^kernel/],
      ['[   12.1] BUG: unable to handle page fault for address: 0000000000001000', /^kernel/],
      ['[   12.2] Oops: 0000 [#1] PREEMPT SMP NOPTI', /^kernel/],
      ['[   12.3] RIP: 0010:timerqueue_add+0x20/0xa0 Call Trace:', /^kernel/],
      ['[   12.4] Kernel panic - not syncing: Fatal exception', /^kernel/],
      ['[   12.5] general protection fault, probably for non-canonical address', /^kernel/],
      ['[   12.6] WARNING: CPU: 0 PID: 1 at kernel/time/timer.c:1 foo', /^kernel/],
      ['VSBED BOOT counter=0 disks=vda', /^reboot/],
    ];
    for (const [line, who] of cases) {
      const problems = oracleProblems(`${healthy}${line}\nTICK 150\n`);
      assert.equal(problems.length, 1, line);
      assert.match(problems[0]!, who);
      assert.ok(problems[0]!.endsWith(line.trim()), 'the line itself is quoted');
    }
  });

  it('a guest that stops making progress: either oracle short is a problem that says which', () => {
    const onlyDisk = 'TICK 1\nTICK 2\nTICK 3\n';
    assert.equal(enoughProgress(progressOf(onlyDisk), DEFAULT_WATCH), false);
    assert.match(stalled(progressOf(onlyDisk), DEFAULT_WATCH)!, /3 of 3 TICK lines .* 0 of 2 sweep lines .* within 90s/);
    assert.match(stalled(progressOf(''), DEFAULT_WATCH)!, /^no progress: 0 of 3 TICK/);
    // A guest without the memory oracle is judged by its disk oracle alone.
    assert.equal(stalled(progressOf(onlyDisk), { ...DEFAULT_WATCH, sweeps: 0 }), null);
  });
});
