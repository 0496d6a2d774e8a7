"""The connections this gateway process holds, by id and by user."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from chat_common.process import MemoryTrimmer
from chat_gateway.connection import Connection


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._by_user: dict[str, set[str]] = defaultdict(set)
        self._trimmer = MemoryTrimmer()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    @property
    def users(self) -> int:
        return len(self._by_user)

    def add(self, connection: Connection) -> None:
        self._by_id[connection.id] = connection
        self._trimmer.note(len(self._by_id))

    def bind_user(self, connection: Connection) -> None:
        assert connection.user_id is not None
        self._by_user[connection.user_id].add(connection.id)

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def remove(self, connection: Connection) -> None:
        self._by_id.pop(connection.id, None)
        self._trimmer.note(len(self._by_id))
        if connection.user_id is not None:
            ids = self._by_user.get(connection.user_id)
            if ids is not None:
                ids.discard(connection.id)
                if not ids:
                    del self._by_user[connection.user_id]
