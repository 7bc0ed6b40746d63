"""The pieces of bench/peers.py that live beside it: shared process/CPU helpers, the floors
(a bare grpc.aio echo, a bare restore, a session run on the pool alone), the
``serve --processes N`` tree and the goals' "what bounds it" text."""
