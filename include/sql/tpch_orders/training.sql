-- Training rows: one row per order placed in the lookback window that ends at the run's
-- data interval end (exclusive), so the run for ds includes the orders of ds itself.
-- Rendered by Airflow with StrictUndefined; `source` and `window_start` come from the
-- validated use-case config (see include/config/tpch_orders.yaml).
-- label = 1 when every line item of the order was received after its commit date. TPC-H draws
-- ship/receipt/commit dates per line item, so the chance that all lines are late falls with the
-- number of lines and quantity: predictable from the features, but not a copy of any of them.
SELECT
    o.orderkey AS orderkey,
    o.orderdate AS orderdate,
    SUM(l.extendedprice) AS total_extended_price,
    AVG(l.discount) AS avg_discount,
    SUM(l.quantity) AS total_quantity,
    COUNT(*) AS lineitem_count,
    SUM(l.extendedprice * (1 - l.discount) * l.tax) AS total_payable_tax,
    CASE WHEN MIN(CASE WHEN l.receiptdate > l.commitdate THEN 1 ELSE 0 END) = 1 THEN 1 ELSE 0 END AS label
FROM {{ source.catalog }}.{{ source.schema }}.orders AS o
JOIN {{ source.catalog }}.{{ source.schema }}.lineitem AS l
    ON l.orderkey = o.orderkey
WHERE o.orderdate >= DATE '{{ window_start(data_interval_end) }}'
    AND o.orderdate < DATE '{{ data_interval_end | ds }}'
GROUP BY o.orderkey, o.orderdate
ORDER BY o.orderkey
