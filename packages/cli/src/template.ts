/**
 * Go-template style `--format` / `-f` strings, as far as people use them with `docker … --format`:
 * `{{.Name}}`, `{{.Labels.team}}`, `{{json .}}`, `{{range .Endpoints}}{{.Name}} {{end}}`,
 * `{{range $k, $v := .Labels}}{{$k}}={{$v}}{{end}}`, `{{if .Internal}}…{{else}}…{{end}}`,
 * `{{with …}}`, pipelines (`{{.Name | upper}}`), `{{- trim -}}` markers, and the functions in
 * {@link FUNCTIONS}. Field names match exactly or, failing that, ignoring case, so `{{.Name}}` and
 * `{{.ID}}` work on kvnet's lower-case JSON (`name`, `id`) as they do on Docker's. A field that is a
 * function is called with the arguments that follow it (`{{.Label "team"}}`). As in Docker, a literal
 * `\t` or `\n` in the format stands for a tab or a newline.
 *
 * Errors ({@link TemplateError}) name the template position and the field or function; the CLI turns
 * them into usage errors (exit 2) before it asks the agent anything when the template does not parse.
 */

/** A template that does not parse, or fails on the data it is given. */
export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateError';
  }
}

type Node =
  | { readonly kind: 'text'; readonly text: string }
  | { readonly kind: 'action'; readonly pipe: Pipeline; readonly pos: number }
  | { readonly kind: 'range' | 'if' | 'with'; readonly pipe: Pipeline; readonly vars: readonly string[]; readonly body: Node[]; readonly otherwise: Node[]; readonly pos: number };

type Operand =
  | { readonly kind: 'field'; readonly base: 'dot' | string; readonly path: readonly string[] }
  | { readonly kind: 'literal'; readonly value: unknown }
  | { readonly kind: 'func'; readonly name: string };

type Command = readonly Operand[];
type Pipeline = readonly Command[];

/** Functions usable in templates. */
export const FUNCTIONS: Readonly<Record<string, (...args: unknown[]) => unknown>> = {
  json: (v) => JSON.stringify(v ?? null),
  index: (v, ...keys) => keys.reduce((acc: unknown, k) => lookup(acc, String(k), false, 'index'), v),
  len: (v) => (Array.isArray(v) ? v.length : typeof v === 'string' ? v.length : v && typeof v === 'object' ? Object.keys(v).length : 0),
  join: (v, sep) => (Array.isArray(v) ? v.map(show).join(String(sep ?? ',')) : show(v)),
  upper: (v) => show(v).toUpperCase(),
  lower: (v) => show(v).toLowerCase(),
  title: (v) => show(v).replace(/\b\w/g, (c) => c.toUpperCase()),
  split: (v, sep) => show(v).split(String(sep)),
  print: (...a) => a.map(show).join(''),
  println: (...a) => a.map(show).join(' ') + '\n',
  printf: (fmt, ...a) => {
    let i = 0;
    return String(fmt).replace(/%([-0-9]*)([sdvq%])/g, (_, width: string, verb: string) => {
      if (verb === '%') return '%';
      const v = a[i++];
      const s = verb === 'q' ? JSON.stringify(show(v)) : verb === 'd' ? String(Math.trunc(Number(v))) : show(v);
      const w = Number(width.replace('-', '')) || 0;
      return width.startsWith('-') ? s.padEnd(w) : s.padStart(w);
    });
  },
  eq: (a, ...b) => b.some((x) => x === a),
  ne: (a, b) => a !== b,
  not: (a) => !truthy(a),
  and: (...a) => a.every(truthy),
  or: (...a) => a.some(truthy),
};

/** A value as Go's template package prints it: maps as `map[k:v]`, lists as `[a b]`, nothing as `<no value>`. */
export function show(v: unknown): string {
  if (v === undefined || v === null) return '<no value>';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return `[${v.map(show).join(' ')}]`;
  if (typeof v === 'function') return '<function>';
  const entries = Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b));
  return `map[${entries.map(([k, x]) => `${k}:${show(x)}`).join(' ')}]`;
}

function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

/**
 * `obj[key]`; with `caseless`, a key differing only in case matches too. A missing key is an error
 * when `strict` (a field of a record: a typo) and `<no value>` otherwise (a key of a map, e.g. a label).
 */
function lookup(obj: unknown, key: string, caseless: boolean, what: string, strict = false): unknown {
  if (obj === null || obj === undefined) return undefined;
  if (typeof obj !== 'object') throw new TemplateError(`can't evaluate field ${key} in ${what}: it is a ${typeof obj}, not an object`);
  const rec = obj as Record<string, unknown>;
  if (Object.hasOwn(rec, key)) return rec[key];
  if (caseless) {
    const lower = key.toLowerCase();
    const match = Object.keys(rec).find((k) => k.toLowerCase() === lower);
    if (match !== undefined) return rec[match];
  }
  if (strict) throw new TemplateError(`no field ${key} in ${what} (fields: ${Object.keys(rec).join(', ') || 'none'})`);
  return undefined;
}

// ---- parsing ----

/** Turns the literal escapes `\t` and `\n` into tab and newline (Docker does the same). */
export function unescapeFormat(format: string): string {
  return format.replaceAll('\\t', '\t').replaceAll('\\n', '\n');
}

interface Token {
  readonly text: string;
  readonly action: boolean;
  readonly pos: number;
}

function lex(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    if (open < 0) {
      out.push({ text: src.slice(i), action: false, pos: i });
      break;
    }
    let text = src.slice(i, open);
    let start = open + 2;
    if (src[start] === '-' && /\s/.test(src[start + 1] ?? '')) {
      text = text.trimEnd();
      start++;
    }
    if (text) out.push({ text, action: false, pos: i });
    const close = findClose(src, start);
    if (close < 0) throw new TemplateError(`unclosed action at position ${open}: missing "}}"`);
    let body = src.slice(start, close);
    i = close + 2;
    if (/\s-$/.test(body)) {
      body = body.slice(0, -1);
      const m = /^\s*/.exec(src.slice(i))!;
      i += m[0].length;
    }
    out.push({ text: body.trim(), action: true, pos: open });
  }
  return out;
}

/** The index of the `}}` ending an action starting at `from`, skipping quoted strings. */
function findClose(src: string, from: number): number {
  for (let i = from; i < src.length - 1; i++) {
    const c = src[i];
    if (c === '"' || c === '`') {
      const q = c;
      for (i++; i < src.length && src[i] !== q; i++) if (q === '"' && src[i] === '\\') i++;
      continue;
    }
    if (c === '}' && src[i + 1] === '}') return i;
  }
  return -1;
}

function splitWords(text: string, pos: number): string[] {
  const words: string[] = [];
  const re = /\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\||,|:=|[^\s|,"`]+)/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(text)) !== null) {
    words.push(m[1]!);
    last = re.lastIndex;
  }
  if (text.slice(last).trim() !== '') throw new TemplateError(`cannot parse "${text}" at position ${pos}`);
  return words;
}

function parseOperand(word: string, pos: number): Operand {
  if (word === '.') return { kind: 'field', base: 'dot', path: [] };
  if (word.startsWith('.')) return { kind: 'field', base: 'dot', path: word.slice(1).split('.') };
  if (word.startsWith('$')) {
    const [name, ...path] = word.split('.');
    return { kind: 'field', base: name!, path };
  }
  if (word.startsWith('"')) {
    try {
      return { kind: 'literal', value: JSON.parse(word) as string };
    } catch {
      throw new TemplateError(`bad string ${word} at position ${pos}`);
    }
  }
  if (word.startsWith('`')) return { kind: 'literal', value: word.slice(1, -1) };
  if (/^-?\d+(\.\d+)?$/.test(word)) return { kind: 'literal', value: Number(word) };
  if (word === 'true' || word === 'false') return { kind: 'literal', value: word === 'true' };
  if (word === 'nil') return { kind: 'literal', value: null };
  if (Object.hasOwn(FUNCTIONS, word)) return { kind: 'func', name: word };
  throw new TemplateError(`function "${word}" not defined (at position ${pos}; known: ${Object.keys(FUNCTIONS).join(', ')})`);
}

function parsePipeline(words: readonly string[], pos: number): Pipeline {
  if (words.length === 0) throw new TemplateError(`missing value at position ${pos}`);
  const commands: Operand[][] = [[]];
  for (const w of words) {
    if (w === '|') commands.push([]);
    else commands.at(-1)!.push(parseOperand(w, pos));
  }
  if (commands.some((c) => c.length === 0)) throw new TemplateError(`empty command in pipeline at position ${pos}`);
  return commands;
}

/** Parses a template; throws {@link TemplateError}. */
export function parseTemplate(source: string): Node[] {
  const tokens = lex(unescapeFormat(source));
  let i = 0;
  const parseList = (inBlock: { head: string; pos: number } | undefined): { nodes: Node[]; ended: 'end' | 'else' | undefined } => {
    const nodes: Node[] = [];
    while (i < tokens.length) {
      const t = tokens[i++]!;
      if (!t.action) {
        nodes.push({ kind: 'text', text: t.text });
        continue;
      }
      if (t.text.startsWith('/*')) continue; // comment
      const words = splitWords(t.text, t.pos);
      const head = words[0];
      if (head === 'end' || head === 'else') {
        if (!inBlock) throw new TemplateError(`unexpected {{${head}}} at position ${t.pos}`);
        return { nodes, ended: head };
      }
      if (head === 'range' || head === 'if' || head === 'with') {
        let rest = words.slice(1);
        const vars: string[] = [];
        const decl = rest.indexOf(':=');
        if (decl >= 0) {
          for (const v of rest.slice(0, decl)) if (v !== ',') vars.push(v);
          if (vars.length === 0 || vars.length > 2 || vars.some((v) => !/^\$\w+$/.test(v))) throw new TemplateError(`bad variable declaration at position ${t.pos}`);
          rest = rest.slice(decl + 1);
        }
        const pipe = parsePipeline(rest, t.pos);
        const body = parseList({ head, pos: t.pos });
        let otherwise: Node[] = [];
        if (body.ended === 'else') {
          const e = parseList({ head, pos: t.pos });
          if (e.ended !== 'end') throw new TemplateError(`{{${head}}} at position ${t.pos} has no {{end}}`);
          otherwise = e.nodes;
        } else if (body.ended !== 'end') throw new TemplateError(`{{${head}}} at position ${t.pos} has no {{end}}`);
        nodes.push({ kind: head, pipe, vars, body: body.nodes, otherwise, pos: t.pos });
        continue;
      }
      nodes.push({ kind: 'action', pipe: parsePipeline(words, t.pos), pos: t.pos });
    }
    if (inBlock) throw new TemplateError(`{{${inBlock.head}}} at position ${inBlock.pos} has no {{end}}`);
    return { nodes, ended: undefined };
  };
  return parseList(undefined).nodes;
}

// ---- execution ----

interface Scope {
  readonly dot: unknown;
  readonly vars: ReadonlyMap<string, unknown>;
}

function evalOperand(op: Operand, scope: Scope, args: readonly unknown[]): unknown {
  if (op.kind === 'literal') return op.value;
  if (op.kind === 'func') return FUNCTIONS[op.name]!(...args);
  let v: unknown;
  if (op.base === 'dot') v = scope.dot;
  else {
    if (!scope.vars.has(op.base)) throw new TemplateError(`undefined variable ${op.base}`);
    v = scope.vars.get(op.base);
  }
  let what = op.base === 'dot' ? '.' : op.base;
  for (const [depth, key] of op.path.entries()) {
    v = lookup(v, key, true, what, depth === 0 && !Array.isArray(v));
    what = `${what === '.' ? '' : what}.${key}`;
  }
  return typeof v === 'function' ? (v as (...a: unknown[]) => unknown)(...args) : v;
}

function evalPipeline(pipe: Pipeline, scope: Scope): unknown {
  let prev: unknown[] = [];
  let value: unknown;
  for (const cmd of pipe) {
    const [first, ...rest] = cmd;
    const args = [...rest.map((o) => evalOperand(o, scope, [])), ...prev];
    const callable = first!.kind === 'func' || (first!.kind === 'field' && first!.path.length > 0);
    if (!callable && args.length > 0) throw new TemplateError('only functions and fields can take arguments');
    value = evalOperand(first!, scope, args);
    prev = [value];
  }
  return value;
}

function exec(nodes: readonly Node[], scope: Scope, out: string[]): void {
  for (const n of nodes) {
    if (n.kind === 'text') out.push(n.text);
    else if (n.kind === 'action') out.push(show(evalPipeline(n.pipe, scope)));
    else {
      const v = evalPipeline(n.pipe, scope);
      if (n.kind === 'if') exec(truthy(v) ? n.body : n.otherwise, scope, out);
      else if (n.kind === 'with') {
        const vars = new Map(scope.vars);
        if (n.vars[0]) vars.set(n.vars[0], v);
        exec(truthy(v) ? n.body : n.otherwise, truthy(v) ? { dot: v, vars } : scope, out);
      } else {
        const items: Array<[unknown, unknown]> = Array.isArray(v)
          ? v.map((x, idx) => [idx, x])
          : v && typeof v === 'object'
            ? Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b))
            : [];
        if (v !== undefined && v !== null && typeof v !== 'object') throw new TemplateError(`range can't iterate over ${show(v)}`);
        if (items.length === 0) exec(n.otherwise, scope, out);
        for (const [k, x] of items) {
          const vars = new Map(scope.vars);
          if (n.vars.length === 1) vars.set(n.vars[0]!, x);
          if (n.vars.length === 2) {
            vars.set(n.vars[0]!, k);
            vars.set(n.vars[1]!, x);
          }
          exec(n.body, { dot: x, vars }, out);
        }
      }
    }
  }
}

/** A parsed template, to run on many values. */
export class Template {
  private readonly nodes: Node[];

  /** Parses `source`; throws {@link TemplateError}. */
  constructor(readonly source: string) {
    this.nodes = parseTemplate(source);
  }

  /** Runs the template with `data` as `.` (and `$`); throws {@link TemplateError}. */
  render(data: unknown): string {
    const out: string[] = [];
    exec(this.nodes, { dot: data, vars: new Map([['$', data]]) }, out);
    return out.join('');
  }
}
