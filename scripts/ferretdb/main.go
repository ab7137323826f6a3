// Command ferretdb runs FerretDB (the MongoDB wire protocol) on PostgreSQL, for rampart's
// MongoDB backend tests and local scale-out runs. scripts/services.sh builds and starts it;
// nothing of rampart itself is written in Go.
//
// Flags: -listen 127.0.0.1:27017, -postgresql postgres://127.0.0.1:54329/ferretdb; or
// -sqlite file:/some/dir/ for FerretDB's SQLite backend instead (no PostgreSQL: what tests use
// inside a network namespace of their own, where PostgreSQL, which refuses to run as root,
// cannot be started).
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "MongoDB wire protocol address")
	postgresql := flag.String("postgresql", "postgres://127.0.0.1:54329/ferretdb", "PostgreSQL URL")
	sqlite := flag.String("sqlite", "", "SQLite directory URI (file:/dir/); instead of PostgreSQL")
	flag.Parse()

	handler, backend := "postgresql", *postgresql
	if *sqlite != "" {
		handler, backend = "sqlite", *sqlite
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	server, err := ferretdb.New(&ferretdb.Config{
		Logger:        logger,
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Handler:       handler,
		PostgreSQLURL: *postgresql,
		SQLiteURL:     *sqlite,
	})
	if err != nil {
		log.Fatalf("ferretdb: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Printf("ferretdb listening on %s (%s %s)", *listen, handler, backend)
	if err := server.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatalf("ferretdb: %v", err)
	}
}
