/** Key rules shared by every backend, checked before anything is sent to a server. */

import { InvalidKeyError } from './errors.ts';
import type { ListOptions, WatchOptions } from './store.ts';

export const MAX_SEGMENT_BYTES = 255;
export const MAX_KEY_BYTES = 1024;
const SEGMENT_CHARS = /^[A-Za-z0-9._~:@+=,-]+$/;

/**
 * Throws {@link InvalidKeyError} unless `key` is a valid key: one or more `/`-separated segments,
 * none empty, `.` or `..`, each made of `A–Z a–z 0–9 . _ ~ : @ + = , -` and at most 255 bytes.
 */
export function validateKey(key: string): void {
  if (typeof key !== 'string') throw new InvalidKeyError(String(key), 'a key must be a string');
  if (key.length === 0) throw new InvalidKeyError(key, 'a key must not be empty');
  validatePath(key);
}

/** Like {@link validateKey} but also accepts `''` (the whole store). */
export function validatePrefix(prefix: string): void {
  if (typeof prefix !== 'string') throw new InvalidKeyError(String(prefix), 'a prefix must be a string');
  if (prefix === '') return;
  validatePath(prefix);
}

/**
 * Throws {@link InvalidKeyError} unless `startsWith` (of {@link ListOptions.startsWith} and
 * {@link WatchOptions.startsWith}) is undefined or the start of a segment: non-empty, made of
 * `A–Z a–z 0–9 . _ ~ : @ + = , -` (so no `/`) and at most 255 bytes.
 */
export function validateStartsWith(startsWith: string | undefined): void {
  if (startsWith === undefined) return;
  if (typeof startsWith !== 'string') throw new InvalidKeyError(String(startsWith), 'startsWith must be a string');
  if (startsWith.length === 0) throw new InvalidKeyError(startsWith, 'startsWith must not be empty (leave it out to mean every key)');
  if (Buffer.byteLength(startsWith) > MAX_SEGMENT_BYTES) {
    throw new InvalidKeyError(startsWith, `startsWith is longer than ${MAX_SEGMENT_BYTES} bytes`);
  }
  if (!SEGMENT_CHARS.test(startsWith)) {
    const bad = [...startsWith].find((c) => !SEGMENT_CHARS.test(c)) ?? '?';
    throw new InvalidKeyError(startsWith, `startsWith is the start of one segment and contains ${describeChar(bad)}`);
  }
}

/**
 * The text every key of the range (`prefix`, `startsWith`) starts with: `prefix/startsWith`,
 * `startsWith` alone for the prefix `''`, and `prefix/` (or `''`) without `startsWith`. Both must
 * be valid already.
 */
export function rangeStart(prefix: string, startsWith: string | undefined): string {
  return (prefix === '' ? '' : `${prefix}/`) + (startsWith ?? '');
}

/**
 * The first text after every text that starts with `text` (its last character plus one; keys are
 * ASCII below 0x7f, so it never carries): the exclusive end of a range scan. `text` is not empty.
 */
export function prefixEnd(text: string): string {
  return text.slice(0, -1) + String.fromCharCode(text.charCodeAt(text.length - 1) + 1);
}

function validatePath(path: string): void {
  if (path.includes('\0')) throw new InvalidKeyError(path, 'it contains a NUL character');
  if (Buffer.byteLength(path) > MAX_KEY_BYTES) {
    throw new InvalidKeyError(path, `it is longer than ${MAX_KEY_BYTES} bytes`);
  }
  if (path.startsWith('/')) throw new InvalidKeyError(path, 'it must not start with "/"');
  if (path.endsWith('/')) throw new InvalidKeyError(path, 'it must not end with "/"');
  for (const segment of path.split('/')) {
    if (segment === '') throw new InvalidKeyError(path, 'it has an empty segment ("//")');
    if (segment === '.' || segment === '..') {
      throw new InvalidKeyError(path, `it has a "${segment}" segment`);
    }
    if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) {
      throw new InvalidKeyError(path, `segment "${segment.slice(0, 20)}…" is longer than ${MAX_SEGMENT_BYTES} bytes`);
    }
    if (!SEGMENT_CHARS.test(segment)) {
      const bad = [...segment].find((c) => !SEGMENT_CHARS.test(c)) ?? '?';
      throw new InvalidKeyError(path, `segment "${segment}" contains ${describeChar(bad)}`);
    }
  }
}

function describeChar(c: string): string {
  const code = c.codePointAt(0) ?? 0;
  if (code < 0x20 || code === 0x7f) return `the control character U+${code.toString(16).padStart(4, '0')}`;
  return `the character ${JSON.stringify(c)} (allowed: A-Z a-z 0-9 . _ ~ : @ + = , -)`;
}

/**
 * True when `key` lies strictly below `prefix` (`''` contains everything) and, with `startsWith`,
 * its path below `prefix/` starts with it: the keys `list(prefix, {startsWith})` covers.
 */
export function isUnder(prefix: string, key: string, startsWith?: string): boolean {
  if (startsWith !== undefined) return key.startsWith(rangeStart(prefix, startsWith));
  if (prefix === '') return true;
  return key.length > prefix.length + 1 && key.startsWith(prefix) && key.charCodeAt(prefix.length) === 0x2f;
}

/** Joins key segments, escaping nothing: each part must already be a valid segment or path. */
export function joinKey(...parts: string[]): string {
  return parts.filter((p) => p !== '').join('/');
}

/**
 * Turns arbitrary text (a network name with unusual characters, an IPv6 address, a CIDR) into one
 * valid segment: allowed characters stay, every other byte (including `~` itself) becomes `~XX` in
 * hex; the empty string becomes `~`. Reversible with {@link decodeSegment}.
 */
export function encodeSegment(text: string): string {
  if (text === '') return '~';
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9._:@+=,-]/.test(c) && byte < 0x80) out += c;
    else out += '~' + byte.toString(16).padStart(2, '0');
  }
  if (out === '.' || out === '..') out = out.replace(/\./g, '~2e');
  return out;
}

export function decodeSegment(segment: string): string {
  if (segment === '~') return '';
  const bytes: number[] = [];
  for (let i = 0; i < segment.length; i++) {
    if (segment[i] === '~') {
      bytes.push(parseInt(segment.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(segment.charCodeAt(i));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}
