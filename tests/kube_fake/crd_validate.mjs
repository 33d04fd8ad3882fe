// Strict validation of custom resources (Istio, Gateway API) with the AJV validators that
// @kubernetes-models/* generate from the published CRDs.
//
// Protocol: one JSON object per line on stdin, `{"id": N, "module": "<absolute .js path>", "object": {...}}`;
// one answer per line on stdout, `{"id": N, "errors": [{"path": "/spec/x", "message": "..."}]}` (or
// `{"id": N, "fatal": "..."}` when the module cannot be loaded). One process serves the whole test run:
// starting node and loading a validator costs far more than one validation.
//
// Why the Proxy: the generated validators follow the CRDs' structural schemas, which do not forbid
// unknown fields (the API server prunes them, and with strict field validation it rejects them). A
// compiled validator reads exactly the properties its schema declares, and enumerates an object's keys
// only where the schema allows arbitrary ones (a map: additionalProperties, x-kubernetes-preserve-unknown-
// fields checks). So every own key of a plain object that the validator never read, in an object whose
// keys it never enumerated, is a field the schema does not know: the same verdict as the server's.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const modules = new Map();

async function load(path) {
  if (!modules.has(path)) {
    const mod = await import(pathToFileURL(path).href);
    if (typeof mod.validate !== "function") throw new Error(`${path} exports no validate function`);
    modules.set(path, mod.validate);
  }
  return modules.get(path);
}

function pointer(path) {
  return path.map((p) => "/" + String(p).replaceAll("~", "~0").replaceAll("/", "~1")).join("");
}

// Wrap `root` so that every read of a property and every enumeration of keys is recorded per object.
function track(root) {
  const seen = new Map(); // target -> {path, read: Set, enumerated: bool}
  const proxies = new WeakMap();
  function wrap(value, path) {
    if (value === null || typeof value !== "object") return value;
    if (proxies.has(value)) return proxies.get(value);
    const record = { path, read: new Set(), enumerated: false };
    seen.set(value, record);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === "string") record.read.add(key);
        const child = Reflect.get(target, key, receiver);
        if (typeof key !== "string" || !Object.prototype.hasOwnProperty.call(target, key)) return child;
        return wrap(child, path.concat(Array.isArray(target) ? Number(key) : key));
      },
      has(target, key) {
        if (typeof key === "string") record.read.add(key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        record.enumerated = true;
        return Reflect.ownKeys(target);
      },
      getOwnPropertyDescriptor(target, key) {
        return Reflect.getOwnPropertyDescriptor(target, key);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  }
  const proxy = wrap(root, []);
  function unknown() {
    const out = [];
    for (const [target, record] of seen) {
      if (Array.isArray(target) || record.enumerated) continue;
      for (const key of Object.keys(target)) {
        if (!record.read.has(key)) out.push(pointer(record.path.concat(key)));
      }
    }
    return out.sort();
  }
  return { proxy, unknown };
}

function describe(error) {
  const p = error.params || {};
  switch (error.keyword) {
    case "type":
      return `must be ${p.type}`;
    case "required":
      return `Required value: ${p.missingProperty}`;
    case "enum":
      return `Unsupported value: must be one of ${JSON.stringify(p.allowedValues)}`;
    case "pattern":
      return `must match pattern ${JSON.stringify(p.pattern)}`;
    case "format":
      return `must match format ${JSON.stringify(p.format)}`;
    case "additionalProperties":
      return `unknown field ${JSON.stringify(p.additionalProperty)}`;
    case "minLength":
    case "maxLength":
    case "minimum":
    case "maximum":
    case "minItems":
    case "maxItems":
    case "minProperties":
    case "maxProperties":
      return `${error.keyword} ${p.limit}`;
    default:
      return `failed ${error.keyword} ${JSON.stringify(p)}`;
  }
}

async function handle(request) {
  const validate = await load(request.module);
  const { proxy, unknown } = track(request.object);
  const ok = validate(proxy);
  const errors = [];
  if (!ok) {
    for (const error of validate.errors || []) {
      errors.push({ path: error.instancePath || "", message: describe(error) });
    }
  }
  for (const path of unknown()) errors.push({ path, message: "unknown field" });
  return errors;
}

const lines = createInterface({ input: process.stdin, terminal: false });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    process.stdout.write(JSON.stringify({ id: null, fatal: `bad request line: ${error.message}` }) + "\n");
    continue;
  }
  let answer;
  try {
    answer = { id: request.id, errors: await handle(request) };
  } catch (error) {
    answer = { id: request.id, fatal: String(error && error.stack ? error.stack : error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
