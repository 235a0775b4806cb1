// Runs graphql-http's GraphQL over HTTP audits against a URL and prints one JSON line
// per audit: {"id", "name", "status", "reason"}. Exit code 0 whatever the results:
// the Python test decides what passes.
const { auditServer } = require('graphql-http');

(async () => {
  const [url, authorization] = process.argv.slice(2);
  const fetchFn = (input, init = {}) => {
    const headers = new Headers(init.headers);
    if (authorization) headers.set('authorization', authorization);
    return fetch(input, { ...init, headers });
  };
  const results = await auditServer({ url, fetchFn });
  for (const { id, name, status, reason } of results) {
    console.log(JSON.stringify({ id, name, status, reason: reason || null }));
  }
})().catch((error) => {
  console.error(error);
  process.exit(2);
});
