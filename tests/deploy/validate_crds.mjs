// Validates Prometheus Operator custom resources against the validators that
// @kubernetes-models/prometheus-operator generates from the operator's CRD OpenAPI schemas.
//   node validate_crds.mjs NODE_MODULES_DIR < docs.json
// stdin: a JSON array of manifests; stdout: a JSON array, one {kind, name, ok, error} per manifest.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const docs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  const [group, version] = String(doc.apiVersion).split("/");
  const file = join(modules, "@kubernetes-models/prometheus-operator", group, version, `${doc.kind}.js`);
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[doc.kind];
  } catch (e) {
    results.push({ kind: doc.kind, name: doc.metadata?.name, ok: false, error: `no schema for ${doc.apiVersion} ${doc.kind}` });
    continue;
  }
  try {
    new Model(doc).validate();
    results.push({ kind: doc.kind, name: doc.metadata?.name, ok: true, error: null });
  } catch (e) {
    results.push({ kind: doc.kind, name: doc.metadata?.name, ok: false, error: String(e.message ?? e) });
  }
}
process.stdout.write(JSON.stringify(results));
