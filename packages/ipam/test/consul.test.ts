import test from 'ava';
import { runIpamSuiteOnServer } from './suite.ts';

runIpamSuiteOnServer(test, 'consul');
