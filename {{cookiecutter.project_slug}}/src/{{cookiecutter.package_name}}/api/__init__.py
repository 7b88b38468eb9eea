"""HTTP routers. They wire the toolkit, the database and the upstreams; they hold no
concurrency logic of their own."""
