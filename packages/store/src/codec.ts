/** Values are bytes; kvnet's own records are JSON. */

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** Parses a JSON value written by {@link encodeJson}; throws a SyntaxError naming the key on garbage. */
export function decodeJson<T>(bytes: Uint8Array, key = '(value)'): T {
  try {
    return JSON.parse(decoder.decode(bytes)) as T;
  } catch (err) {
    throw new SyntaxError(`store key ${key} does not hold valid JSON: ${(err as Error).message}`);
  }
}

export function encodeText(text: string): Uint8Array {
  return encoder.encode(text);
}

export function decodeText(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
}
