package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// WorkChannel is the LISTEN/NOTIFY channel on which nodes announce new work.
// The payload is the store's schema, so installations sharing a database
// ignore each other's signals.
const WorkChannel = "batchsender_work"

// notifyTx sends the work signal as part of tx: PostgreSQL delivers it only
// if and when tx commits, so listeners never wake before the work is
// visible to them.
func (s *Store) notifyTx(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, WorkChannel, s.notifyData); err != nil {
		return fmt.Errorf("signalling work: %w", err)
	}
	return nil
}

// WorkSignal tells every node sharing the database that new work may be
// due. The store already signals by itself whenever a change makes items
// claimable (a batch starts, resumes or is activated, failed items are
// retried, leases are rescued, items are released).
func (s *Store) WorkSignal(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, WorkChannel, s.notifyData); err != nil {
		return fmt.Errorf("signalling work: %w", err)
	}
	return nil
}

// WorkWait listens for work signals on a dedicated connection and calls
// wake on each, until ctx ends; then it returns nil. When the connection
// drops it reconnects with backoff, logging the failure, and calls wake once
// after each reconnect since signals sent meanwhile were lost. It returns an
// error only when it cannot make its first connection.
func (s *Store) WorkWait(ctx context.Context, wake func()) error {
	conn, err := s.listen(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	backoff := 100 * time.Millisecond
	for {
		s.listenPIDv.Store(conn.PgConn().PID())
		err := s.waitOn(ctx, conn, wake)
		s.listenPIDv.Store(0)
		closeQuietly(conn)
		if ctx.Err() != nil {
			return nil
		}
		s.logger.Warn("work signal listener lost its connection; reconnecting", slog.Any("error", err))
		for {
			// Full jitter keeps a restarted database from being hit by all
			// nodes at once.
			d := time.Duration(rand.Int64N(int64(backoff))) + 10*time.Millisecond
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			backoff = min(backoff*2, 30*time.Second)
			conn, err = s.listen(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Warn("work signal listener cannot reconnect", slog.Any("error", err))
		}
		backoff = 100 * time.Millisecond
		wake()
	}
}

// waitOn calls wake for each of this installation's signals on conn until
// the connection fails or ctx ends.
func (s *Store) waitOn(ctx context.Context, conn *pgx.Conn, wake func()) error {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == WorkChannel && n.Payload == s.notifyData {
			wake()
		}
	}
}

// listen opens a connection of its own (LISTEN needs a session, which a
// pooled connection cannot promise) and subscribes it to WorkChannel.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := s.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("listening for work signals: %w", err)
	}
	if _, err := conn.Exec(ctx, `LISTEN `+WorkChannel); err != nil {
		closeQuietly(conn)
		return nil, fmt.Errorf("listening for work signals: %w", err)
	}
	return conn, nil
}

// dial opens a connection outside the pool with the pool's settings.
func (s *Store) dial(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
}

func closeQuietly(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// listenPID returns the server process ID of the WorkWait connection, 0
// while there is none; for tests.
func (s *Store) listenPID() uint32 { return s.listenPIDv.Load() }

// leaderPID returns the server process ID of the leader connection, 0 if
// there is none; for tests.
func (s *Store) leaderPID() uint32 {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	if s.leaderConn == nil {
		return 0
	}
	return s.leaderConn.PgConn().PID()
}

// LeaderTry makes this process the leader if no live process is, and
// reports whether it is the leader now.
//
// Leadership is a session-level advisory lock held by a dedicated
// connection. PostgreSQL releases the lock when that session ends, so a
// node that dies (or whose connection is cut) loses the role and the next
// LeaderTry of another node takes it. Each call checks that the connection
// still answers; a leader whose connection broke reports false and tries
// again on a fresh connection.
func (s *Store) LeaderTry(ctx context.Context) (bool, error) {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	if s.leaderConn != nil {
		err := s.leaderConn.Ping(ctx)
		if err == nil && s.leader {
			return true, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if s.leader {
				s.logger.Warn("lost the leader connection; giving up the maintenance role", slog.Any("error", err))
			}
			closeQuietly(s.leaderConn)
			s.leaderConn, s.leader = nil, false
		}
	}
	if s.leaderConn == nil {
		conn, err := s.dial(ctx)
		if err != nil {
			return false, fmt.Errorf("electing leader: %w", err)
		}
		s.leaderConn = conn
	}
	var got bool
	if err := s.leaderConn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, s.leaderKey).Scan(&got); err != nil {
		closeQuietly(s.leaderConn)
		s.leaderConn, s.leader = nil, false
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return false, err
		}
		return false, fmt.Errorf("electing leader: %w", err)
	}
	s.leader = got
	if got {
		s.logger.Info("took the maintenance role", slog.String("schema", s.schema))
	}
	return got, nil
}
