// Builds ../../static/plotly-pcam.min.js from entry.js with the settings of plotly.js's own
// esbuild-config.js (its partial bundles are made the same way), minified, with plotly.js's licence header.
const path = require('path');
const esbuild = require('esbuild');
const { environmentPlugin } = require('esbuild-plugin-environment');
const InlineCSSPlugin = require('esbuild-plugin-inline-css');
const { version } = require('plotly.js/package.json');
const traces = ['scatter', 'bar', 'heatmap', 'histogram'];

esbuild
  .build({
    entryPoints: [path.join(__dirname, 'entry.js')],
    outfile: path.join(__dirname, '..', '..', 'static', 'plotly-pcam.min.js'),
    format: 'iife',
    globalName: 'Plotly',
    bundle: true,
    minify: true,
    plugins: [InlineCSSPlugin(), environmentPlugin({ NODE_DEBUG: false })],
    alias: { stream: 'stream-browserify' },
    define: { global: 'window', 'define.amd': 'false' },
    target: 'es2016',
    legalComments: 'eof', // the licence notices of the libraries plotly.js bundles, at the end
    banner: {
      js: `/**\n* plotly.js (pcam: ${traces.join(', ')} - minified) v${version}\n* Copyright 2012-2026, Plotly, Inc.\n` +
        '* All rights reserved.\n* Licensed under the MIT license\n*/',
    },
    logLevel: 'info',
  })
  .catch(() => process.exit(1));
