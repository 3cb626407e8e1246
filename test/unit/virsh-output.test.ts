// What virsh prints, as read by the libvirt client (outputs seen on libvirt 9.0).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { blockJobInRaw, describeCommands, parseDescribe, parseStateReason } from '../../lib/libvirt/virsh.js';

describe('virsh output', () => {
  it('blockjob --raw under -q: a job prints type=, none prints nothing (--info would print an empty line for both)', () => {
    assert.equal(blockJobInRaw(' type=Active Block Commit\n bandwidth=0\n cur=1572864\n end=1572864\n'), true);
    assert.equal(blockJobInRaw(''), false);
    assert.equal(blockJobInRaw('\n'), false);
  });

  it('domstate --reason', () => {
    assert.deepEqual(parseStateReason('paused (I/O error)\n'), { state: 'paused', reason: 'I/O error' });
    assert.deepEqual(parseStateReason('running (unpaused)'), { state: 'running', reason: 'unpaused' });
    assert.deepEqual(parseStateReason('shut off (destroyed)'), { state: 'shut off', reason: 'destroyed' });
    assert.deepEqual(parseStateReason('running'), { state: 'running', reason: '' });
  });
});

describe('many domains in one virsh run', () => {
  const marker = 'virtsnap-0f0e0d0c-0000-4000-8000-000000000001';
  const a = '11111111-1111-1111-1111-111111111111';
  const b = '22222222-2222-2222-2222-222222222222';
  const c = '33333333-3333-3333-3333-333333333333';
  const xmlA = "<domain type='qemu'>\n  <name>a</name>\n  <description>virtsnap-forged state 22222222-2222-2222-2222-222222222222\n</description>\n</domain>\n";
  const xmlC = "<domain type='kvm'>\n  <name>c</name>\n</domain>\n";

  it('the commands: an echo of the marker before each output, split by virsh at ;', () => {
    assert.equal(
      describeCommands([a], marker),
      `echo ${marker} state ${a} ; domstate ${a} ; echo ${marker} xml ${a} ; dumpxml ${a} ; echo ${marker} end`,
    );
  });

  it('reads state and XML per domain, exactly as virsh -q dumpxml prints it; a failed domain is left out', () => {
    // As virsh 9.0 prints it without -q: an empty line after each command's output, none after echo.
    // b was undefined meanwhile: its domstate and dumpxml printed nothing on stdout.
    const out =
      `${marker} state ${a}\nrunning\n\n${marker} xml ${a}\n${xmlA}\n` +
      `${marker} state ${b}\n${marker} xml ${b}\n` +
      `${marker} state ${c}\nshut off\n\n${marker} xml ${c}\n${xmlC}\n${marker} end\n`;
    const got = parseDescribe(out, marker);
    assert.deepEqual([...got.keys()], [a, c]);
    assert.deepEqual(got.get(a), { state: 'running', xml: xmlA });
    assert.deepEqual(got.get(c), { state: 'shut off', xml: xmlC });
  });

  it('an answer cut short leaves the unfinished domain out', () => {
    const got = parseDescribe(`${marker} state ${a}\nrunning\n\n${marker} xml ${a}\n`, marker);
    assert.equal(got.size, 0);
  });
});
