DROP INDEX orders_user_seq_idx;
