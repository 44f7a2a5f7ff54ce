#!/usr/bin/env bash
# Install Node 22 and the MCP Inspector CLI 2.x into .node/ (ignored by git), from the npm registry.
# tests/ensemble_mcp/test_inspector.py uses .node/node_modules/.bin/{node,mcp-inspector}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null; then
    echo "install-inspector: npm not found; install Node.js (any version) first" >&2
    exit 1
fi
mkdir -p .node
[ -f .node/package.json ] || echo '{"name": "ensemble-mcp-node-tools", "private": true}' \
    > .node/package.json
# node@22 ships the Node 22 binary as an npm package; the inspector 2.x needs Node >= 22.19, and
# on an older node npm would silently pick inspector 0.15 instead.
npm install --prefix .node --no-audit --no-fund --loglevel=error \
    node@22 @modelcontextprotocol/inspector@2
PATH="$PWD/.node/node_modules/.bin:$PATH" node --version
PATH="$PWD/.node/node_modules/.bin:$PATH" mcp-inspector --help >/dev/null 2>&1 || true
echo "install-inspector: MCP Inspector installed under .node/"
