/** The Go-template subset of `--format` / `-f` (pure). */

import test from 'ava';
import { Template, TemplateError } from '../src/template.ts';

const data = {
  name: 'multi',
  id: 'f'.repeat(64),
  internal: false,
  labels: { team: 'web', 'com.example.tier': 'front' },
  endpoints: [
    { name: 'c1', ip: '10.0.1.2', node: 'h1' },
    { name: 'c2', ip: '10.0.1.3', node: 'h2' },
  ],
  empty: [],
};
const r = (src: string, d: unknown = data): string => new Template(src).render(d);

test('fields (case-insensitive on records), nested keys, json, literal escapes', (t) => {
  t.is(r('{{.Name}} {{.name}} {{.Labels.team}}'), 'multi multi web');
  t.is(r('{{.Labels.nope}}'), '<no value>', 'a missing map key prints <no value>, as in Go');
  t.is(r('{{json .Labels}}'), '{"team":"web","com.example.tier":"front"}');
  t.is(r('{{index .Labels "com.example.tier"}}'), 'front');
  t.is(r('{{.Name}}\\t{{.Internal}}\\n'), 'multi\tfalse\n');
  t.is(r('{{.Endpoints}}'), '[map[ip:10.0.1.2 name:c1 node:h1] map[ip:10.0.1.3 name:c2 node:h2]]');
});

test('range over lists and maps, with variables, else and $', (t) => {
  t.is(r('{{range .Endpoints}}{{.Name}}@{{.Node}} {{end}}'), 'c1@h1 c2@h2 ');
  t.is(r('{{range $i, $e := .Endpoints}}{{$i}}:{{$e.IP}};{{end}}'), '0:10.0.1.2;1:10.0.1.3;');
  t.is(r('{{range $k, $v := .Labels}}{{$k}}={{$v}},{{end}}'), 'com.example.tier=front,team=web,');
  t.is(r('{{range .Empty}}x{{else}}none{{end}}'), 'none');
  t.is(r('{{range .Endpoints}}{{$.Name}}/{{.Name}} {{end}}'), 'multi/c1 multi/c2 ');
});

test('if/else, with, pipelines, functions, trim markers', (t) => {
  t.is(r('{{if .Internal}}internal{{else}}routed{{end}}'), 'routed');
  t.is(r('{{with .Labels.team}}team {{.}}{{end}}'), 'team web');
  t.is(r('{{.Name | upper}} {{len .Endpoints}} [{{join .Empty ","}}]'), 'MULTI 2 []');
  t.is(r('{{.Name | printf "<%s>"}}'), '<multi>', 'a pipeline passes its value as the last argument');
  t.is(r('{{printf "%-6s|%3d" .Name 7}}'), 'multi |  7');
  t.is(r('a  {{- .Name -}}  b'), 'amultib');
  t.is(r('{{if eq .Name "multi" "other"}}yes{{end}}'), 'yes');
});

test('errors name the position, the field and the function', (t) => {
  t.throws(() => r('{{.Nope}}'), { instanceOf: TemplateError, message: /no field Nope in \. \(fields: name, id, internal/ });
  t.throws(() => new Template('{{frob .Name}}'), { instanceOf: TemplateError, message: /function "frob" not defined \(at position 0/ });
  t.throws(() => new Template('x {{.Name'), { instanceOf: TemplateError, message: /unclosed action at position 2/ });
  t.throws(() => new Template('{{end}}'), { instanceOf: TemplateError, message: /unexpected \{\{end\}\} at position 0/ });
  t.throws(() => new Template('{{if .Name}}x'), { instanceOf: TemplateError, message: /\{\{if\}\} at position 0 has no \{\{end\}\}/ });
});
