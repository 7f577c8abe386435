module github.com/movies-dev/movies

go 1.26.8

require (
	go.uber.org/goleak v1.3.0
	golang.org/x/net v0.59.0
	golang.org/x/sync v0.25.0
)

require github.com/stretchr/testify v1.11.1 // indirect
