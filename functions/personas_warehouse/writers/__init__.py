"""How rows reach BigQuery: one interface, two writers side by side behind group commit.

    contract.py       Writer (what the Warehouse asks of a writer), Tables (what a writer may ask of the
                      table catalog), Entry, Deferred, RowRefusal
    insert_all.py     InsertAllWriter: tabledata.insertAll (legacy streaming)
    storage_write.py  StorageWriteWriter: the Storage Write API's default stream (gRPC, protobuf rows)

bigquery.Warehouse is built with its writers in order (app.py picks them from BIGQUERY_WRITER) and runs
each behind a group commit of its own; rows a writer defers (a column BigQuery does not show it yet) go
to the next one. Nothing here imports bigquery.py: the Warehouse hands itself to a write as `Tables`.
Importing this package imports no writer, so the Write API's gRPC stack is loaded only where it is used.
"""
