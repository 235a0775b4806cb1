// GraphiQL for the shop: every asset from this server, queries and mutations over
// HTTP and subscriptions over WebSocket to this same /graphql, a Headers editor ready
// for a bearer token, and example operations in tabs.
(function () {
  "use strict";

  const url = window.location.origin + window.location.pathname;
  const subscriptionUrl = url.replace(/^http/, "ws");

  const WELCOME = `# The shop's GraphQL API.
#
# Browsing the catalogue needs no token. A customer's own data needs its
# token, running the shop an admin's. Make one on the server's machine:
#
#     cqrs-shop token --admin
#     cqrs-shop token --customer <customer id>
#
# and put it in the Headers tab below:
#
#     { "Authorization": "Bearer <the token>" }
#
# The tabs above hold examples. A mutation answers with a version:
# pass it as minVersion to read your own write.
# Run: Ctrl-Enter (or the play button). Complete: Ctrl-Space.

query Products {
  products(first: 10, sort: NEWEST) {
    totalCount
    edges { node { id sku name priceCents stockAvailable version } }
    pageInfo { hasNextPage endCursor }
  }
}
`;

  const EXAMPLES = [
    { query: WELCOME },
    {
      query: `# Needs an admin token (see the first tab).
mutation CreateProduct($input: CreateProductInput!) {
  createProduct(input: $input, idempotencyKey: "graphiql-example-1") {
    success id version errors { code message field }
  }
}`,
      variables: JSON.stringify(
        {
          input: {
            sku: "GRAPHIQL-1",
            name: "GraphiQL mug",
            category: "mugs",
            priceCents: 1299,
            initialStock: 10,
          },
        },
        null,
        2,
      ),
    },
    {
      query: `# Read your own write: minVersion is the version a mutation answered.
query Product($id: ID!, $minVersion: Version) {
  product(id: $id, minVersion: $minVersion) {
    sku name priceCents stockOnHand stockReserved unitsSold version
  }
}`,
      variables: '{\n  "id": "<a product id>",\n  "minVersion": 1\n}',
    },
    {
      query: `# Live over WebSocket: the product now, then after every change.
subscription WatchProduct($id: ID!) {
  productUpdated(id: $id) { sku stockAvailable priceCents version }
}`,
      variables: '{\n  "id": "<a product id>"\n}',
    },
    {
      query: `# Needs an admin token.
query Dashboard {
  dashboard { productCount customerCount orderCount revenueCents version }
  topProducts(limit: 5) { sku name unitsSold revenueCents }
}`,
    },
    {
      query: `# Needs an admin token: each projection's position, lag and state.
query Projections {
  projections { name checkpoint headVersion lag state lastError }
}`,
    },
  ];

  const fetcher = GraphiQL.createFetcher({ url, subscriptionUrl });
  const plugins = [GraphiQLPluginExplorer.explorerPlugin()];

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher,
      plugins,
      defaultTabs: EXAMPLES,
      defaultHeaders: '{\n  "Authorization": ""\n}',
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    }),
  );
})();
