#!/usr/bin/env node
// A stub that exists before the build, so that installing the workspace can
// link the command; the CLI itself is compiled into dist/.
import '../dist/bin/pool-agent.js';
