// Runs one server-prepared statement (prepareThreshold=1) many times, in and out of transactions, through a
// transaction-pooled endpoint; prints the sum of what came back.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;

public class JdbcPrepared {
    public static void main(String[] args) throws Exception {
        long sum = 0;
        try (Connection conn = DriverManager.getConnection(args[0], "postgres", System.getenv("PGPASSWORD"));
             PreparedStatement st = conn.prepareStatement("SELECT ?::int * 2")) {
            for (int i = 0; i < 100; i++) {
                conn.setAutoCommit(i % 2 == 0);
                st.setInt(1, i);
                try (ResultSet rs = st.executeQuery()) {
                    rs.next();
                    sum += rs.getInt(1);
                }
                if (i % 2 == 1) {
                    conn.commit();
                }
            }
        }
        System.out.println(sum);
    }
}
