// AssemblyScript's `abort` (failed assertions, bounds checks, `throw`,
// allocation failures), routed here by the build with
// `--use abort=sdk/abort/lockstepAbort`: it logs the reason through the
// `lockstep` log import at error level (once), then traps, which the runtime
// records as a `trap:unreachable` fault.
//
// It may run while the module's globals are being initialised, so it uses
// nothing but a static buffer and the raw import.

import * as raw from "./raw";

// @ts-ignore: decorator
@inline const CAPACITY: i32 = 256;
// @ts-ignore: decorator
@inline const LEVEL_ERROR: i32 = 0;

// The line (256 bytes), 16 bytes for formatting numbers, the "aborting" flag.
// @ts-ignore: decorator
@lazy const BUF: usize = memory.data(CAPACITY + 24, 8);

function putStr(n: i32, s: string | null): i32 {
  if (s === null) return n;
  // ASCII, anything else as '?': no encoder, no allocation.
  const str = changetype<string>(s);
  const len = min(str.length, CAPACITY - n);
  for (let i = 0; i < len; i++) {
    const c = str.charCodeAt(i);
    store<u8>(BUF + <usize>(n + i), c < 0x80 ? <u8>c : 63);
  }
  return n + max(len, 0);
}

function putNum(n: i32, v: u32): i32 {
  const tmp = BUF + <usize>CAPACITY;
  let p = tmp + 12;
  do {
    p--;
    store<u8>(p, <u8>(48 + v % 10));
    v /= 10;
  } while (v != 0);
  const len = min(<i32>(tmp + 12 - p), CAPACITY - n);
  if (len > 0) memory.copy(BUF + <usize>n, p, len);
  return n + max(len, 0);
}

/** Logs `abort: <message> at <file>:<line>:<column>` at error level (once
 *  per instance), then traps. */
export function lockstepAbort(
  message: string | null = null,
  fileName: string | null = null,
  lineNumber: u32 = 0,
  columnNumber: u32 = 0,
): void {
  const flag = BUF + <usize>CAPACITY + 16;
  if (load<u8>(flag) == 0) {
    store<u8>(flag, 1);
    let n = putStr(0, "abort: ");
    n = putStr(n, message !== null ? message : "(no message)");
    if (fileName !== null) {
      n = putStr(n, " at ");
      n = putStr(n, fileName);
      n = putStr(n, ":");
      n = putNum(n, lineNumber);
      n = putStr(n, ":");
      n = putNum(n, columnNumber);
    }
    raw.log(LEVEL_ERROR, BUF, <usize>n);
  }
  unreachable();
}
