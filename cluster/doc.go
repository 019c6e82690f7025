// Package cluster holds the multi-node tests of BatchSender on PostgreSQL:
// several `batchsender serve` and `batchsender worker` processes of the real
// binary sharing one database, one of them killed with SIGKILL mid-batch,
// and the throughput of one node against three on latency-bound work.
//
// The tests need PostgreSQL (127.0.0.1:5432, database test, or
// BATCHSENDER_TEST_DATABASE_URL); each works in a fresh schema of its own.
// An unreachable database fails them: a skipped cluster test would pass CI
// while testing nothing.
package cluster
